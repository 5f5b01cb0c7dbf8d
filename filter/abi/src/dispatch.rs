//! The contexts Envoy creates, kept by id, and the routing of its callbacks
//! to them. Nothing here panics: a callback for a context or a gRPC token
//! this module does not know is logged and ignored.

use std::cell::{Cell, RefCell};

use crate::hostcalls;
use crate::idmap::IdMap;
use crate::wire::{Action, BufferType};

/// A plugin: one per plugin configuration in the VM.
pub trait RootContext {
    /// Takes the plugin configuration; `false` refuses it (Envoy then
    /// rejects the configuration).
    fn on_configure(&mut self, config: &[u8]) -> bool;

    /// The context of a new HTTP stream.
    fn create_stream(&self, context_id: u32) -> Box<dyn StreamContext>;
}

/// One HTTP stream. Dropped when Envoy deletes the stream: a gRPC call still
/// in flight should be cancelled then.
pub trait StreamContext {
    fn on_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    /// `body_size` is the size of the whole body buffered so far.
    fn on_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_request_trailers(&mut self, _num_trailers: usize) -> Action {
        Action::Continue
    }

    fn on_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    /// The end of a gRPC call this stream started: gRPC `status` 0 with a
    /// reply of `body_size` bytes (in [`BufferType::GrpcReceive`]), or a
    /// non-zero status and no reply.
    fn on_grpc_response(&mut self, _token: u32, _status: u32, _body_size: usize) {}
}

/// Makes the root context of a plugin.
pub type NewRoot = fn(context_id: u32) -> Box<dyn RootContext>;

/// All the module's contexts.
pub(crate) struct Dispatcher {
    new_root: Cell<Option<NewRoot>>,
    roots: RefCell<IdMap<Box<dyn RootContext>>>,
    streams: RefCell<IdMap<Box<dyn StreamContext>>>,
    /// gRPC calls in flight: token → the context that started the call.
    calls: RefCell<IdMap<u32>>,
    /// The context of the callback being run.
    active: Cell<u32>,
}

thread_local! {
    static DISPATCHER: Dispatcher = const { Dispatcher::new() };
}

/// Runs `f` on the module's dispatcher; `None` if it cannot be reached
/// (only while the thread is being torn down, which a Wasm VM never is).
pub(crate) fn with<R>(f: impl FnOnce(&Dispatcher) -> R) -> Option<R> {
    DISPATCHER.try_with(f).ok()
}

/// Records a gRPC call started by the active context.
pub(crate) fn call_started(token: u32) {
    with(|d| match d.calls.try_borrow_mut() {
        Ok(mut calls) => {
            calls.insert(token, d.active.get());
        }
        Err(_) => log::error!("gRPC call {token}: cannot record it; its reply will be ignored"),
    });
}

/// Forgets a gRPC call (cancelled).
pub(crate) fn call_ended(token: u32) {
    with(|d| {
        if let Ok(mut calls) = d.calls.try_borrow_mut() {
            calls.remove(&token);
        }
    });
}

impl Dispatcher {
    /// No plugin and no context yet (a constant: the thread-local needs no
    /// lazy initialisation).
    const fn new() -> Self {
        Dispatcher {
            new_root: Cell::new(None),
            roots: RefCell::new(IdMap::new()),
            streams: RefCell::new(IdMap::new()),
            calls: RefCell::new(IdMap::new()),
            active: Cell::new(0),
        }
    }

    pub(crate) fn set_root(&self, new_root: NewRoot) {
        self.new_root.set(Some(new_root));
    }

    /// A new root (`root_id` 0) or stream context.
    pub(crate) fn create(&self, id: u32, root_id: u32) {
        let Some(new_root) = self.new_root.get() else {
            log::error!("[{id}] context created before the module was started");
            return;
        };
        let Ok(mut roots) = self.roots.try_borrow_mut() else {
            log::error!("[{id}] context created during another callback: ignored");
            return;
        };
        if root_id == 0 {
            roots.insert(id, new_root(id));
            return;
        }
        // A stream of a root never created is served by a root never
        // configured, which refuses its requests.
        let Some(root) = roots.get_or_insert_with(root_id, || {
            log::error!("[{id}] stream of unknown root context {root_id}");
            new_root(root_id)
        }) else {
            return;
        };
        let stream = root.create_stream(id);
        drop(roots);
        self.insert_stream(id, stream);
    }

    fn insert_stream(&self, id: u32, stream: Box<dyn StreamContext>) {
        match self.streams.try_borrow_mut() {
            Ok(mut streams) => {
                streams.insert(id, stream);
            }
            Err(_) => log::error!("[{id}] stream created during another callback: ignored"),
        }
    }

    /// Configures a root context with the plugin configuration of
    /// `config_size` bytes.
    pub(crate) fn configure(&self, id: u32, config_size: usize) -> bool {
        self.active.set(id);
        let config = if config_size == 0 {
            Vec::new()
        } else {
            match hostcalls::buffer(BufferType::PluginConfiguration, 0, config_size) {
                Ok(bytes) => bytes.unwrap_or_default(),
                Err(e) => {
                    log::error!("[{id}] cannot read the plugin configuration: {e}");
                    return false;
                }
            }
        };
        match self.roots.try_borrow_mut() {
            Ok(mut roots) => match roots.get_mut(&id) {
                Some(root) => root.on_configure(&config),
                None => {
                    log::error!("[{id}] configuration for an unknown root context: refused");
                    false
                }
            },
            Err(_) => {
                log::error!("[{id}] configuration during another callback: refused");
                false
            }
        }
    }

    /// Runs a stream callback. A stream this module does not know (Envoy
    /// never created it, or it could not be recorded) is made by a root
    /// never configured, which refuses its requests, rather than let a
    /// request through unjudged.
    pub(crate) fn stream<R>(
        &self,
        id: u32,
        f: impl FnOnce(&mut dyn StreamContext) -> R,
        otherwise: R,
    ) -> R {
        self.active.set(id);
        let Ok(known) = self.streams.try_borrow().map(|s| s.contains_key(&id)) else {
            log::error!("[{id}] stream callback during another callback: ignored");
            return otherwise;
        };
        if !known {
            if let Some(new_root) = self.new_root.get() {
                log::error!("[{id}] callback for an unknown stream");
                self.insert_stream(id, new_root(0).create_stream(id));
            }
        }
        let Ok(mut streams) = self.streams.try_borrow_mut() else {
            log::error!("[{id}] stream callback during another callback: ignored");
            return otherwise;
        };
        match streams.get_mut(&id) {
            Some(stream) => f(stream.as_mut()),
            None => otherwise,
        }
    }

    /// The end of a gRPC call: to the stream that started it, if both are
    /// still known; ignored otherwise.
    pub(crate) fn grpc_response(&self, token: u32, status: u32, body_size: usize) {
        let context = match self.calls.try_borrow_mut() {
            Ok(mut calls) => calls.remove(&token),
            Err(_) => None,
        };
        let Some(id) = context else {
            log::debug!("gRPC reply for unknown call {token}: ignored");
            return;
        };
        let Ok(mut streams) = self.streams.try_borrow_mut() else {
            log::error!("[{id}] gRPC reply during another callback: ignored");
            return;
        };
        let Some(stream) = streams.get_mut(&id) else {
            log::debug!("[{id}] gRPC reply for a stream that is gone: ignored");
            return;
        };
        self.active.set(id);
        if let Err(e) = hostcalls::set_effective_context(id) {
            log::warn!("[{id}] cannot make the stream the host's current context: {e}");
        }
        stream.on_grpc_response(token, status, body_size);
    }

    /// Envoy deletes a context: drop it, and forget its calls.
    pub(crate) fn delete(&self, id: u32) {
        self.active.set(id);
        let stream = match self.streams.try_borrow_mut() {
            Ok(mut streams) => streams.remove(&id),
            Err(_) => None,
        };
        // Dropped with no borrow held: its `Drop` may cancel a call.
        drop(stream);
        if let Ok(mut roots) = self.roots.try_borrow_mut() {
            roots.remove(&id);
        }
        if let Ok(mut calls) = self.calls.try_borrow_mut() {
            calls.retain(|_, context| *context != id);
        }
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        (
            self.roots.borrow().len(),
            self.streams.borrow().len(),
            self.calls.borrow().len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    thread_local! {
        /// What the test streams saw: (stream id, event).
        static SEEN: RefCell<Vec<(u32, String)>> = const { RefCell::new(Vec::new()) };
    }

    fn seen() -> Vec<(u32, String)> {
        SEEN.with(|s| s.borrow().clone())
    }

    fn record(id: u32, event: String) {
        SEEN.with(|s| s.borrow_mut().push((id, event)));
    }

    struct Root {
        configured: Rc<Cell<bool>>,
    }

    impl RootContext for Root {
        fn on_configure(&mut self, config: &[u8]) -> bool {
            self.configured.set(true);
            config.is_empty()
        }
        fn create_stream(&self, id: u32) -> Box<dyn StreamContext> {
            Box::new(Stream {
                id,
                configured: self.configured.get(),
            })
        }
    }

    struct Stream {
        id: u32,
        configured: bool,
    }

    impl StreamContext for Stream {
        fn on_request_headers(&mut self, _: usize, _: bool) -> Action {
            record(self.id, format!("headers configured={}", self.configured));
            if self.configured {
                Action::Continue
            } else {
                Action::Pause
            }
        }
        fn on_grpc_response(&mut self, token: u32, status: u32, size: usize) {
            record(self.id, format!("grpc {token} {status} {size}"));
        }
    }

    impl Drop for Stream {
        fn drop(&mut self) {
            record(self.id, "dropped".into());
        }
    }

    fn new_root(_: u32) -> Box<dyn RootContext> {
        Box::new(Root {
            configured: Rc::new(Cell::new(false)),
        })
    }

    fn started() -> Dispatcher {
        let d = Dispatcher::new();
        d.set_root(new_root);
        d.create(1, 0);
        assert!(d.configure(1, 0));
        d
    }

    fn headers(d: &Dispatcher, id: u32) -> Action {
        d.stream(id, |s| s.on_request_headers(0, false), Action::Continue)
    }

    #[test]
    fn streams_are_made_by_their_root_and_dropped_on_delete() {
        let d = started();
        d.create(2, 1);
        assert_eq!(headers(&d, 2), Action::Continue);
        assert_eq!(d.counts(), (1, 1, 0));
        d.delete(2);
        assert_eq!(d.counts(), (1, 0, 0));
        assert_eq!(
            seen(),
            [(2, "headers configured=true".into()), (2, "dropped".into())]
        );
    }

    #[test]
    fn a_configuration_the_host_cannot_give_is_refused() {
        let d = Dispatcher::new();
        d.set_root(new_root);
        d.create(1, 0);
        // Native builds have no host: the read fails.
        assert!(!d.configure(1, 10));
        // So does one for a root that does not exist.
        assert!(!d.configure(7, 0));
    }

    #[test]
    fn grpc_replies_go_to_the_caller_and_unknown_ones_are_ignored() {
        let d = started();
        d.create(2, 1);
        d.create(3, 1);
        d.calls.borrow_mut().insert(40, 3);
        d.grpc_response(99, 0, 5); // unknown token
        d.grpc_response(40, 14, 0);
        d.grpc_response(40, 0, 5); // already answered
        assert_eq!(seen(), [(3, "grpc 40 14 0".into())]);

        // A call whose stream is gone.
        d.calls.borrow_mut().insert(41, 2);
        d.calls.borrow_mut().insert(42, 9);
        d.delete(2);
        d.grpc_response(41, 0, 1);
        d.grpc_response(42, 0, 1);
        assert_eq!(d.counts(), (1, 1, 0));
        assert_eq!(seen().len(), 2);
    }

    #[test]
    fn unknown_streams_and_roots_get_an_unconfigured_root() {
        let d = started();
        // A stream of a root that was never created.
        d.create(5, 8);
        assert_eq!(headers(&d, 5), Action::Pause);
        // A callback for a stream never created.
        assert_eq!(headers(&d, 6), Action::Pause);
        assert_eq!(
            seen(),
            [
                (5, "headers configured=false".into()),
                (6, "headers configured=false".into())
            ]
        );
        // Deleting what does not exist is nothing.
        d.delete(77);
        assert_eq!(d.counts(), (2, 2, 0));
    }

    #[test]
    fn nothing_happens_before_the_module_is_started() {
        let d = Dispatcher::new();
        d.create(1, 0);
        d.create(2, 1);
        assert!(!d.configure(1, 0));
        assert_eq!(headers(&d, 2), Action::Continue);
        assert_eq!(d.counts(), (0, 0, 0));
    }

    #[test]
    fn reentrant_callbacks_are_refused_not_panicked_on() {
        let d = started();
        d.create(2, 1);
        let inner = d.stream(2, |_| headers(&d, 2), Action::Pause);
        // The inner callback could not borrow the streams: its fallback.
        assert_eq!(inner, Action::Continue);
        d.calls.borrow_mut().insert(40, 2);
        d.stream(2, |_| d.grpc_response(40, 0, 0), ());
        assert!(seen().iter().all(|(_, e)| !e.starts_with("grpc")));
    }
}
