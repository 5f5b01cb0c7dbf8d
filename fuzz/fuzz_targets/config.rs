//! Arbitrary bytes as the plugin configuration: parsing never panics, and an
//! accepted configuration keeps the rules the README states.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_ratelimit::config::{Config, Source};
use mcp_ratelimit::rls;

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = Config::parse(data) else {
        return;
    };
    assert!(!cfg.domain.is_empty() && !cfg.rls_cluster.is_empty());
    assert!((1..=60_000).contains(&cfg.timeout_ms));
    assert!((1..=64 << 20).contains(&cfg.max_body_bytes));
    assert!(!cfg.header_fast_path || cfg.validate_mcp_headers);
    assert!(cfg.meta_tools.iter().all(|m| !m.is_empty()));
    assert!(cfg.param_headers.len() <= 32);
    assert_eq!(cfg.argument_keys.len(), cfg.param_headers.len());
    for (p, k) in cfg.param_headers.iter().zip(&cfg.argument_keys) {
        assert_eq!(&p.argument, k);
        assert!(!p.tool.is_empty() && !p.argument.is_empty());
        let name = p.header.strip_prefix("mcp-param-").unwrap_or_default();
        assert!(!name.is_empty());
        assert_eq!(p.header, p.header.to_ascii_lowercase());
    }
    assert!(!cfg.descriptors.is_empty());
    for d in &cfg.descriptors {
        assert!(!d.entries.is_empty() && !d.name.is_empty());
        for e in &d.entries {
            assert!(!e.key.is_empty());
            match &e.source {
                Source::Literal(v) => assert!(!v.is_empty()),
                Source::Header(h) => {
                    assert!(!h.is_empty());
                    assert_eq!(*h, h.to_ascii_lowercase());
                    assert!(cfg.headers_used.contains(h));
                }
                Source::Metadata { namespace, path } => {
                    assert!(!namespace.is_empty());
                    assert!(!path.is_empty() && path.iter().all(|p| !p.is_empty()));
                }
                Source::Mcp(_) => {}
            }
        }
    }
    for reply in [&cfg.over_limit, &cfg.rls_failure] {
        assert!((200..=599).contains(&reply.http_status));
        assert!(!reply.message.is_empty());
        let decoded: String =
            serde_json::from_str(&reply.message_json).expect("message_json is a JSON string");
        assert_eq!(decoded, reply.message);
    }
    assert_eq!(cfg.encoded_domain, rls::encode_domain(&cfg.domain));
    // Parsing is a function of the bytes.
    let again = Config::parse(data).expect("accepted once, accepted again");
    assert_eq!(format!("{cfg:?}"), format!("{again:?}"));
});
