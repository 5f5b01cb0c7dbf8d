//! envoyproxy/ratelimit's own config test files: which must load, which must be refused
//! and with which cause (see tests/conformance/README.md for their origin).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{conformance_dir, load};
use dev_rls::{ConfigSource, LoadOptions, RateLimitConfig};

/// Files that load on their own.
const MUST_LOAD: &[&str] = &[
    "basic_config.yaml",
    "duplicate_domain.yaml",
    "example.yaml",
    "example_config.yaml",
    "merge_domain_key1.yaml",
    "merge_domain_key2.yaml",
    "metadata.yaml",
    "shadowmode_config.yaml",
    "share_threshold.yaml",
    "wildcard.yaml",
];

/// Files refused on their own, with the cause the reference service names.
const MUST_REFUSE: &[(&str, &str)] = &[
    ("empty_domain.yaml", "config file cannot have empty domain"),
    ("empty_key.yaml", "descriptor has empty key"),
    (
        "duplicate_key.yaml",
        "duplicate descriptor composite key 'test-domain.key1_value1'",
    ),
    ("bad_limit_unit.yaml", "invalid rate limit unit 'foo'"),
    (
        "replaces_self.yaml",
        "replaces should not contain name of same descriptor",
    ),
    (
        "replaces_empty.yaml",
        "should not have an empty replaces entry",
    ),
    ("bad_yaml.yaml", "error loading config file"),
    ("misspelled_key.yaml", "unknown key 'ratelimit'"),
    ("misspelled_key2.yaml", "unknown key 'requestsperunit'"),
    ("non_string_key.yaml", "key is not of type string: 0.25"),
    (
        "non_map_list.yaml",
        "yaml file contains list of type other than map",
    ),
    (
        "unlimited_with_unit.yaml",
        "should not specify rate limit unit when unlimited",
    ),
];

fn refused(files: &[&str], options: LoadOptions) -> dev_rls::ConfigError {
    match load(files, options) {
        Ok(_) => panic!("{files:?} should be refused"),
        Err(e) => e,
    }
}

#[test]
fn every_shipped_file_is_classified() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(conformance_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    let classified: BTreeSet<String> = MUST_LOAD
        .iter()
        .copied()
        .chain(MUST_REFUSE.iter().map(|(f, _)| *f))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        on_disk, classified,
        "every conformance file must be in MUST_LOAD or MUST_REFUSE"
    );
    assert_eq!(on_disk.len(), 22);
}

#[test]
fn must_load_files_load() {
    for file in MUST_LOAD {
        let config = load(&[file], LoadOptions::default())
            .unwrap_or_else(|e| panic!("{file} should load, got: {e}"));
        assert!(!config.domains().is_empty(), "{file} has a domain");
    }
}

#[test]
fn must_refuse_files_are_refused_with_the_reference_cause() {
    for (file, cause) in MUST_REFUSE {
        let err = refused(&[file], LoadOptions::default());
        let text = err.to_string();
        assert!(
            text.contains(cause),
            "{file}: error {text:?} should contain {cause:?}"
        );
        assert!(
            err.file.ends_with(file),
            "{file}: error names the file: {:?}",
            err.file
        );
        assert!(
            text.starts_with(&err.file),
            "{file}: message starts with the file name: {text:?}"
        );
    }
}

#[test]
fn duplicate_domain_across_files_is_refused() {
    let err = refused(
        &["basic_config.yaml", "duplicate_domain.yaml"],
        LoadOptions::default(),
    );
    assert!(
        err.file.ends_with("duplicate_domain.yaml"),
        "blames the second file: {err}"
    );
    assert!(
        err.message
            .contains("duplicate domain 'test-domain' in config file"),
        "{err}"
    );
    // Without merging, the two merge files are also duplicates.
    let err = refused(
        &["merge_domain_key1.yaml", "merge_domain_key2.yaml"],
        LoadOptions::default(),
    );
    assert!(
        err.message.contains("duplicate domain 'test-domain'"),
        "{err}"
    );
}

#[test]
fn files_of_one_domain_merge_when_asked() {
    let merge = LoadOptions {
        merge_domains: true,
    };
    let config = load(&["merge_domain_key1.yaml", "merge_domain_key2.yaml"], merge).unwrap();
    assert_eq!(config.domains(), vec!["test-domain"]);
    let key1 = config
        .get_limit("test-domain", &[("key1", "value1")])
        .expect("key1 limit");
    assert_eq!(key1.limit.requests_per_unit, 10);
    let key2 = config
        .get_limit("test-domain", &[("key2", "value2")])
        .expect("key2 limit");
    assert_eq!(key2.limit.requests_per_unit, 20);

    // Loading key1 twice is an error even when merging.
    let err = refused(&["merge_domain_key1.yaml", "merge_domain_key1.yaml"], merge);
    assert!(
        err.message
            .contains("duplicate descriptor composite key 'test-domain.key1_value1'"),
        "{err}"
    );
}

/// envoyproxy/ratelimit's config test files as shared beside the repository:
/// `<repo>/../shared/ratelimit-conformance/configs`.
fn shared_configs() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // e2e/dev-rls/ -> the repository root.
    let repo = manifest
        .ancestors()
        .nth(2)
        .expect("the crate lives at <repo>/e2e/dev-rls");
    repo.join("../shared/ratelimit-conformance/configs")
}

#[test]
fn copies_match_the_shared_conformance_data() {
    let ours = conformance_dir();
    assert!(
        ours.join("LICENSE").is_file(),
        "the Apache-2.0 LICENSE travels with the copies"
    );
    let shared = shared_configs();
    assert!(
        shared.is_dir(),
        "the shared conformance data is missing: expected envoyproxy/ratelimit's config test \
         files in {} (the shared/ directory beside the repository)",
        shared.display()
    );
    let mut compared = 0;
    for entry in std::fs::read_dir(&shared).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let original = std::fs::read(entry.path()).unwrap();
        let copy = std::fs::read(ours.join(&name))
            .unwrap_or_else(|_| panic!("{name:?} is missing from tests/conformance"));
        assert_eq!(original, copy, "{name:?} differs from the shared original");
        compared += 1;
    }
    assert!(compared > 0, "{} holds no files", shared.display());
}

fn refused_yaml(yaml: &str) -> String {
    match RateLimitConfig::from_yaml("inline.yaml", yaml) {
        Ok(_) => panic!("should be refused:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn further_reference_rules() {
    // An unknown key deep inside a rate_limit is named.
    let err = refused_yaml("domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      burst: 3\n");
    assert!(
        err.contains("inline.yaml: config error, unknown key 'burst'"),
        "{err}"
    );
    // A float where the reference only accepts strings, ints and bools.
    let err = refused_yaml("domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1.5\n");
    assert!(err.contains("error checking config"), "{err}");
    // A string where a number is needed fails the typed decode.
    let err = refused_yaml("domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: lots\n");
    assert!(err.contains("error loading config file"), "{err}");
    // share_threshold needs a wildcard value.
    let err = refused_yaml(
        "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n",
    );
    assert!(
        err.contains("share_threshold can only be used with wildcard values"),
        "{err}"
    );
    // A top-level list is not a config.
    let err = refused_yaml("- domain: d\n");
    assert!(err.contains("error loading config file"), "{err}");
    // Units are case-insensitive; unlimited needs no unit.
    RateLimitConfig::from_yaml(
        "ok.yaml",
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: Minute, requests_per_unit: 3}\n  - key: b\n    rate_limit: {unlimited: true}\n",
    )
    .unwrap();
}

#[test]
fn sources_are_key_checked_before_any_is_loaded() {
    // As in the reference, a YAML/key error in a later file wins over a semantic error in an earlier one.
    let sources = [
        ConfigSource::new("first.yaml", "descriptors: []\n"),
        ConfigSource::new("second.yaml", "domain: x\nbogus: 1\n"),
    ];
    let err = RateLimitConfig::from_sources(&sources, LoadOptions::default()).unwrap_err();
    assert_eq!(err.file, "second.yaml");
    assert!(err.message.contains("unknown key 'bogus'"), "{err}");
}
