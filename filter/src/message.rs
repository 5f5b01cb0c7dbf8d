//! What a request is, once read: the types shared by the body parser
//! (`jsonrpc`), the MCP header rules (`mcp_headers`), the configuration and
//! the per-request flow. This module depends on no other of the crate.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// What a request body resolves to.
#[derive(Debug)]
pub enum Body<'a> {
    /// One JSON-RPC message.
    Single(Request<'a>),
    /// A JSON-RPC batch (MCP 2025-03-26); never empty.
    Batch(Vec<Request<'a>>),
}

impl<'a> Body<'a> {
    /// The messages of the body, one for a single message.
    pub fn requests(&self) -> &[Request<'a>] {
        match self {
            Body::Single(r) => std::slice::from_ref(r),
            Body::Batch(v) => v,
        }
    }
}

/// The fields of one JSON-RPC message that limits can key on.
#[derive(Debug, Default)]
pub struct Request<'a> {
    /// The `id` exactly as sent (any JSON type); `None` for a notification.
    pub id: Option<&'a RawValue>,
    /// `method`; `None` for a JSON-RPC response sent by the client.
    pub method: Option<Cow<'a, str>>,
    /// `params.name` (`tools/call`, `prompts/get`) or `params.uri`
    /// (`resources/read`) as sent: what `Mcp-Name` mirrors.
    pub name: Option<Cow<'a, str>>,
    /// The resolved target of the call, if the method has one.
    pub target: Option<Target<'a>>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`.
    pub meta_protocol_version: Option<Cow<'a, str>>,
    /// Arguments kept for `Mcp-Param-*` checks, one slot per configured
    /// [`ParamHeader`].
    pub(crate) kept: Vec<Option<&'a RawValue>>,
}

impl<'a> Request<'a> {
    /// A request known from its MCP routing headers only.
    pub fn from_headers(
        method: Cow<'a, str>,
        name: Option<Cow<'a, str>>,
        target: Option<Target<'a>>,
    ) -> Self {
        Request {
            id: None,
            method: Some(method),
            name,
            target,
            meta_protocol_version: None,
            kept: Vec::new(),
        }
    }

    /// The JSON text of the argument of configured mapping `i`, if given.
    pub fn argument(&self, i: usize) -> Option<&'a RawValue> {
        self.kept.get(i).copied().flatten()
    }
}

/// The object a method acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// `tools/call`: the tool, with meta-tools unwrapped.
    Tool(Cow<'a, str>),
    /// `prompts/get`: `params.name`.
    Prompt(Cow<'a, str>),
    /// `resources/read`: `params.uri`.
    Resource(Cow<'a, str>),
}

/// An `Mcp-Param-{Name}` header that mirrors a top-level argument of a tool
/// (the argument whose input schema carries `x-mcp-header: {Name}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamHeader {
    pub tool: String,
    pub argument: String,
    /// The full header name, lowercase (`mcp-param-{name}`).
    pub header: String,
}
