//! Loading, validating and matching envoyproxy/ratelimit's YAML configuration.
//!
//! The loader follows the reference service's rules (`src/config/config_impl.go`):
//! every mapping key anywhere in a file must be one of the known configuration keys
//! (one flat set, as in the reference), list elements must be maps, the domain must
//! be set and unique (unless [`LoadOptions::merge_domains`] is on, the equivalent of
//! the reference's `MERGE_DOMAIN_CONFIG`), descriptor keys must be non-empty and
//! unique per level, units must be valid, `unlimited` limits must not name a unit,
//! and `replaces` entries must be non-empty and must not name their own limit.
//! Every error names the file and the cause, with the reference's wording.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde_norway::{Mapping, Value};

/// Every key the reference service accepts, anywhere in a file.
const VALID_KEYS: &[&str] = &[
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "name",
    "replaces",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "quota_mode",
    "metadata",
];

/// Time unit of a rate limit, numbered as `RateLimitResponse.RateLimit.Unit` in the RLS proto.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// One second.
    Second,
    /// Sixty seconds.
    Minute,
    /// 3600 seconds.
    Hour,
    /// 86400 seconds.
    Day,
    /// Seven days.
    Week,
    /// Thirty days (as the reference service counts a month).
    Month,
    /// 365 days (as the reference service counts a year).
    Year,
}

impl Unit {
    /// Parses a unit name case-insensitively (`second`, `MINUTE`, ...); `unknown` is not a unit.
    pub fn parse(name: &str) -> Option<Unit> {
        match name.to_uppercase().as_str() {
            "SECOND" => Some(Unit::Second),
            "MINUTE" => Some(Unit::Minute),
            "HOUR" => Some(Unit::Hour),
            "DAY" => Some(Unit::Day),
            "WEEK" => Some(Unit::Week),
            "MONTH" => Some(Unit::Month),
            "YEAR" => Some(Unit::Year),
            _ => None,
        }
    }

    /// Length of one window of this unit in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// The proto enum number (SECOND=1 MINUTE=2 HOUR=3 DAY=4 MONTH=5 YEAR=6 WEEK=7).
    pub fn proto(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// The unit for a proto enum number, `None` for UNKNOWN or an unknown number.
    pub fn from_proto(value: i32) -> Option<Unit> {
        match value {
            1 => Some(Unit::Second),
            2 => Some(Unit::Minute),
            3 => Some(Unit::Hour),
            4 => Some(Unit::Day),
            5 => Some(Unit::Month),
            6 => Some(Unit::Year),
            7 => Some(Unit::Week),
            _ => None,
        }
    }

    /// The proto enum name (`SECOND`, `MINUTE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "SECOND",
            Unit::Minute => "MINUTE",
            Unit::Hour => "HOUR",
            Unit::Day => "DAY",
            Unit::Week => "WEEK",
            Unit::Month => "MONTH",
            Unit::Year => "YEAR",
        }
    }
}

/// A rate limit attached to a descriptor node of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Allowed hits per window.
    pub requests_per_unit: u32,
    /// Window unit; `None` only for `unlimited` limits, which need none.
    pub unit: Option<Unit>,
    /// `unlimited: true`: the descriptor is answered OK and never counted.
    pub unlimited: bool,
    /// The limit's `name` (empty when not set), reported in `current_limit.name`.
    pub name: String,
    /// Names of limits this limit replaces when both match in one request.
    pub replaces: Vec<String>,
    /// `shadow_mode: true` on the descriptor: counted and reported, never OVER_LIMIT.
    pub shadow_mode: bool,
    /// `quota_mode: true` on the descriptor: counted, an excess is reported as a quota
    /// violation but the descriptor's code stays OK.
    pub quota_mode: bool,
    /// `detailed_metric: true` on the descriptor (metrics only; no effect on decisions).
    pub detailed_metric: bool,
    /// The fully resolved config key, e.g. `test-domain.key1_value1.subkey1`.
    pub full_key: String,
}

/// A configuration error: the file it came from and the cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or source name) that caused the error.
    pub file: String,
    /// The cause, worded as by the reference service.
    pub message: String,
}

impl ConfigError {
    fn new(file: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Options for loading a set of configuration files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Merge files that declare the same domain instead of refusing them (the reference
    /// service's `MERGE_DOMAIN_CONFIG=true`; its default, and ours, is `false`).
    pub merge_domains: bool,
}

/// One configuration file's name and content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSource {
    /// Name used in error messages (normally the file path).
    pub name: String,
    /// YAML text.
    pub content: String,
}

impl ConfigSource {
    /// Builds a source from a name and YAML text.
    pub fn new(name: impl Into<String>, content: impl Into<String>) -> Self {
        ConfigSource {
            name: name.into(),
            content: content.into(),
        }
    }
}

/// The result of matching one request descriptor against the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchedLimit {
    /// The limit of the node matched by the descriptor's last entry.
    pub limit: Arc<RateLimit>,
    /// For each request entry, the wildcard value pattern to count under instead of the
    /// entry's actual value (entries matched through a `share_threshold` wildcard), or `None`.
    pub share_patterns: Vec<Option<String>>,
}

/// A loaded and validated set of domains.
#[derive(Clone, Debug, Default)]
pub struct RateLimitConfig {
    domains: HashMap<String, DescriptorSet>,
}

#[derive(Clone, Debug, Default)]
struct DescriptorSet {
    items: Vec<Descriptor>,
    by_key: HashMap<(String, Option<String>), usize>,
    wildcards: Vec<usize>,
}

#[derive(Clone, Debug)]
struct Descriptor {
    key: String,
    value: Option<String>,
    limit: Option<Arc<RateLimit>>,
    share_threshold: bool,
    children: DescriptorSet,
}

impl DescriptorSet {
    fn exact(&self, key: &str, value: &str) -> Option<&Descriptor> {
        self.by_key
            .get(&(key.to_owned(), Some(value.to_owned())))
            .and_then(|&i| self.items.get(i))
    }

    fn key_only(&self, key: &str) -> Option<&Descriptor> {
        self.by_key
            .get(&(key.to_owned(), None))
            .and_then(|&i| self.items.get(i))
    }

    fn wildcard(&self, key: &str, value: &str) -> Option<&Descriptor> {
        self.wildcards
            .iter()
            .filter_map(|&i| self.items.get(i))
            .find(|d| {
                d.key == key
                    && d.value
                        .as_deref()
                        .is_some_and(|pattern| wildcard_match(pattern, value))
            })
    }
}

/// Matches `value` against `pattern`, where each `*` stands for any (possibly empty)
/// run of characters and everything else must match literally, over the whole value.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return pattern == value;
    };
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        // No `*` at all: the prefix had to be the whole value.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = rest.get(at + part.len()..).unwrap_or_default(),
            None => return false,
        }
    }
    rest.ends_with(last)
}

impl RateLimitConfig {
    /// Reads and loads configuration files, in order.
    pub fn load_files<P: AsRef<Path>>(
        paths: &[P],
        options: LoadOptions,
    ) -> Result<Self, ConfigError> {
        let mut sources = Vec::with_capacity(paths.len());
        for path in paths {
            let path = path.as_ref();
            let name = path.display().to_string();
            let content = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(&name, format!("error reading config file: {e}")))?;
            sources.push(ConfigSource { name, content });
        }
        Self::from_sources(&sources, options)
    }

    /// Loads configuration from in-memory sources, in order. As in the reference service,
    /// every file is parsed and key-checked first, then the files are loaded one by one.
    pub fn from_sources(
        sources: &[ConfigSource],
        options: LoadOptions,
    ) -> Result<Self, ConfigError> {
        let roots = sources
            .iter()
            .map(|s| parse_file(&s.name, &s.content).map(|root| (s.name.as_str(), root)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = RateLimitConfig::default();
        for (name, root) in roots {
            config.load_root(name, root, options)?;
        }
        Ok(config)
    }

    /// Loads a single YAML document (convenience for tests and tools).
    pub fn from_yaml(name: &str, content: &str) -> Result<Self, ConfigError> {
        Self::from_sources(&[ConfigSource::new(name, content)], LoadOptions::default())
    }

    /// Whether a domain is configured.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The configured domains, sorted.
    pub fn domains(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.domains.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Finds the limit for one request descriptor, given as `(key, value)` entries.
    ///
    /// The tree is walked entry by entry; at each level an exact key+value match wins, then
    /// the first wildcard value (in configuration order) that matches, then a value-less key.
    /// A limit applies only when the node matched by the last entry has a `rate_limit`.
    pub fn get_limit(&self, domain: &str, entries: &[(&str, &str)]) -> Option<MatchedLimit> {
        let mut level = self.domains.get(domain)?;
        let mut share_patterns: Vec<Option<String>> = vec![None; entries.len()];
        let mut found = None;
        for (i, &(key, value)) in entries.iter().enumerate() {
            let mut via_wildcard = false;
            let mut next = level.exact(key, value);
            if next.is_none() {
                next = level.wildcard(key, value);
                via_wildcard = next.is_some();
            }
            let Some(node) = next.or_else(|| level.key_only(key)) else {
                break;
            };
            if via_wildcard && node.share_threshold {
                if let Some(slot) = share_patterns.get_mut(i) {
                    slot.clone_from(&node.value);
                }
            }
            if i + 1 == entries.len() {
                found = node.limit.clone();
            }
            if node.children.items.is_empty() {
                break;
            }
            level = &node.children;
        }
        found.map(|limit| MatchedLimit {
            limit,
            share_patterns,
        })
    }

    fn load_root(
        &mut self,
        file: &str,
        root: YamlRoot,
        options: LoadOptions,
    ) -> Result<(), ConfigError> {
        if root.domain.is_empty() {
            return Err(ConfigError::new(
                file,
                "config file cannot have empty domain",
            ));
        }
        let parent = format!("{}.", root.domain);
        if let Some(existing) = self.domains.get_mut(&root.domain) {
            if !options.merge_domains {
                return Err(ConfigError::new(
                    file,
                    format!("duplicate domain '{}' in config file", root.domain),
                ));
            }
            return load_descriptors(file, existing, &parent, root.descriptors);
        }
        let mut set = DescriptorSet::default();
        load_descriptors(file, &mut set, &parent, root.descriptors)?;
        self.domains.insert(root.domain, set);
        Ok(())
    }
}

fn load_descriptors(
    file: &str,
    set: &mut DescriptorSet,
    parent_key: &str,
    descriptors: Vec<YamlDescriptor>,
) -> Result<(), ConfigError> {
    for d in descriptors {
        if d.key.is_empty() {
            return Err(ConfigError::new(file, "descriptor has empty key"));
        }
        let value = (!d.value.is_empty()).then(|| d.value.clone());
        let final_key = match &value {
            Some(v) => format!("{}_{}", d.key, v),
            None => d.key.clone(),
        };
        let full_key = format!("{parent_key}{final_key}");
        let index_key = (d.key.clone(), value.clone());
        if set.by_key.contains_key(&index_key) {
            return Err(ConfigError::new(
                file,
                format!("duplicate descriptor composite key '{full_key}'"),
            ));
        }

        let limit = match d.rate_limit {
            None => None,
            Some(rl) => {
                let unit = Unit::parse(&rl.unit);
                if rl.unlimited {
                    if unit.is_some() {
                        return Err(ConfigError::new(
                            file,
                            "should not specify rate limit unit when unlimited",
                        ));
                    }
                } else if unit.is_none() {
                    return Err(ConfigError::new(
                        file,
                        format!("invalid rate limit unit '{}'", rl.unit),
                    ));
                }
                for replaced in &rl.replaces {
                    if replaced.is_empty() {
                        return Err(ConfigError::new(
                            file,
                            "should not have an empty replaces entry",
                        ));
                    }
                    if *replaced == rl.name {
                        return Err(ConfigError::new(
                            file,
                            "replaces should not contain name of same descriptor",
                        ));
                    }
                }
                Some(Arc::new(RateLimit {
                    requests_per_unit: rl.requests_per_unit,
                    unit,
                    unlimited: rl.unlimited,
                    name: rl.name,
                    replaces: rl.replaces,
                    shadow_mode: d.shadow_mode,
                    quota_mode: d.quota_mode,
                    detailed_metric: d.detailed_metric,
                    full_key: full_key.clone(),
                }))
            }
        };

        let is_wildcard = value.as_deref().is_some_and(|v| v.contains('*'));
        if d.share_threshold && !is_wildcard {
            return Err(ConfigError::new(
                file,
                format!(
                    "share_threshold can only be used with wildcard values (containing '*'), but found key '{final_key}'"
                ),
            ));
        }

        let mut children = DescriptorSet::default();
        load_descriptors(file, &mut children, &format!("{full_key}."), d.descriptors)?;

        let index = set.items.len();
        set.items.push(Descriptor {
            key: d.key,
            value,
            limit,
            share_threshold: d.share_threshold,
            children,
        });
        set.by_key.insert(index_key, index);
        if is_wildcard {
            set.wildcards.push(index);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// YAML parsing: key validation on the generic tree, then a typed decode that
// follows Go's yaml.v2 decoding of the reference's structs.
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct YamlRoot {
    domain: String,
    descriptors: Vec<YamlDescriptor>,
}

#[derive(Debug, Default)]
struct YamlDescriptor {
    key: String,
    value: String,
    rate_limit: Option<YamlRateLimit>,
    descriptors: Vec<YamlDescriptor>,
    shadow_mode: bool,
    detailed_metric: bool,
    share_threshold: bool,
    quota_mode: bool,
}

#[derive(Debug, Default)]
struct YamlRateLimit {
    requests_per_unit: u32,
    unit: String,
    unlimited: bool,
    name: String,
    replaces: Vec<String>,
}

fn load_error(file: &str, detail: impl fmt::Display) -> ConfigError {
    ConfigError::new(file, format!("error loading config file: {detail}"))
}

fn parse_file(file: &str, content: &str) -> Result<YamlRoot, ConfigError> {
    let mut doc: Value = serde_norway::from_str(content).map_err(|e| load_error(file, e))?;
    doc.apply_merge().map_err(|e| load_error(file, e))?;
    let root = match &doc {
        Value::Null => return Ok(YamlRoot::default()),
        Value::Mapping(map) => map,
        other => {
            return Err(load_error(
                file,
                format!("cannot unmarshal {} into a map", yaml_kind(other)),
            ))
        }
    };
    validate_keys(file, root)?;
    decode_root(file, root)
}

fn validate_keys(file: &str, map: &Mapping) -> Result<(), ConfigError> {
    for (key, value) in map {
        let Value::String(key) = key else {
            return Err(ConfigError::new(
                file,
                format!(
                    "config error, key is not of type string: {}",
                    go_display(key)
                ),
            ));
        };
        if !VALID_KEYS.contains(&key.as_str()) {
            return Err(ConfigError::new(
                file,
                format!("config error, unknown key '{key}'"),
            ));
        }
        if key == "metadata" {
            // Free-form data attached to a descriptor; its keys are not config keys.
            continue;
        }
        match value {
            Value::Sequence(items) => {
                for item in items {
                    match item {
                        Value::Mapping(inner) => validate_keys(file, inner)?,
                        other => {
                            return Err(ConfigError::new(
                                file,
                                format!(
                                "config error, yaml file contains list of type other than map: {}",
                                go_display(other)
                            ),
                            ))
                        }
                    }
                }
            }
            Value::Mapping(inner) => validate_keys(file, inner)?,
            Value::String(_) | Value::Bool(_) | Value::Null => {}
            Value::Number(n) if n.as_i64().is_some() => {}
            Value::Number(_) | Value::Tagged(_) => {
                return Err(ConfigError::new(file, "error checking config"));
            }
        }
    }
    Ok(())
}

fn decode_root(file: &str, map: &Mapping) -> Result<YamlRoot, ConfigError> {
    let mut root = YamlRoot::default();
    for (key, value) in map {
        match key.as_str() {
            Some("domain") => root.domain = decode_string(file, "domain", value)?,
            Some("descriptors") => {
                root.descriptors = decode_descriptors(file, "descriptors", value)?
            }
            _ => {}
        }
    }
    Ok(root)
}

fn decode_descriptors(
    file: &str,
    path: &str,
    value: &Value,
) -> Result<Vec<YamlDescriptor>, ConfigError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| decode_descriptor(file, &format!("{path}[{i}]"), item))
            .collect(),
        other => Err(type_error(file, path, other, "a list of descriptors")),
    }
}

fn decode_descriptor(file: &str, path: &str, value: &Value) -> Result<YamlDescriptor, ConfigError> {
    let map = match value {
        Value::Null => return Ok(YamlDescriptor::default()),
        Value::Mapping(map) => map,
        other => return Err(type_error(file, path, other, "a descriptor")),
    };
    let mut d = YamlDescriptor::default();
    for (key, value) in map {
        let Some(key) = key.as_str() else { continue };
        let field = format!("{path}.{key}");
        match key {
            "key" => d.key = decode_string(file, &field, value)?,
            "value" => d.value = decode_string(file, &field, value)?,
            "rate_limit" => d.rate_limit = decode_rate_limit(file, &field, value)?,
            "descriptors" => d.descriptors = decode_descriptors(file, &field, value)?,
            "shadow_mode" => d.shadow_mode = decode_bool(file, &field, value)?,
            "detailed_metric" => d.detailed_metric = decode_bool(file, &field, value)?,
            "share_threshold" => d.share_threshold = decode_bool(file, &field, value)?,
            "quota_mode" => d.quota_mode = decode_bool(file, &field, value)?,
            "value_to_metric" => {
                decode_bool(file, &field, value)?;
            }
            _ => {}
        }
    }
    Ok(d)
}

fn decode_rate_limit(
    file: &str,
    path: &str,
    value: &Value,
) -> Result<Option<YamlRateLimit>, ConfigError> {
    let map = match value {
        Value::Null => return Ok(None),
        Value::Mapping(map) => map,
        other => return Err(type_error(file, path, other, "a rate_limit map")),
    };
    let mut rl = YamlRateLimit::default();
    for (key, value) in map {
        let Some(key) = key.as_str() else { continue };
        let field = format!("{path}.{key}");
        match key {
            "requests_per_unit" => rl.requests_per_unit = decode_u32(file, &field, value)?,
            "unit" => rl.unit = decode_string(file, &field, value)?,
            "unlimited" => rl.unlimited = decode_bool(file, &field, value)?,
            "name" => rl.name = decode_string(file, &field, value)?,
            "replaces" => rl.replaces = decode_replaces(file, &field, value)?,
            _ => {}
        }
    }
    Ok(Some(rl))
}

fn decode_replaces(file: &str, path: &str, value: &Value) -> Result<Vec<String>, ConfigError> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Sequence(items) => items,
        other => return Err(type_error(file, path, other, "a list of replaces entries")),
    };
    let mut names = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let entry_path = format!("{path}[{i}]");
        let mut name = String::new();
        match item {
            Value::Null => {}
            Value::Mapping(map) => {
                for (key, value) in map {
                    if key.as_str() == Some("name") {
                        name = decode_string(file, &format!("{entry_path}.name"), value)?;
                    }
                }
            }
            other => return Err(type_error(file, &entry_path, other, "a replaces entry")),
        }
        names.push(name);
    }
    Ok(names)
}

/// A string field: like yaml.v2, any scalar is taken by its text and null is empty.
fn decode_string(file: &str, path: &str, value: &Value) -> Result<String, ConfigError> {
    match value {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(type_error(file, path, other, "a string")),
    }
}

/// A bool field; YAML 1.1 spellings (`yes`, `on`, ...) are accepted as yaml.v2 does.
fn decode_bool(file: &str, path: &str, value: &Value) -> Result<bool, ConfigError> {
    match value {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.as_str() {
            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Ok(true),
            "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Ok(false),
            _ => Err(type_error(file, path, value, "a bool")),
        },
        other => Err(type_error(file, path, other, "a bool")),
    }
}

fn decode_u32(file: &str, path: &str, value: &Value) -> Result<u32, ConfigError> {
    match value {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| type_error(file, path, value, "an unsigned 32-bit integer")),
        other => Err(type_error(file, path, other, "an unsigned 32-bit integer")),
    }
}

fn type_error(file: &str, path: &str, value: &Value, wanted: &str) -> ConfigError {
    load_error(
        file,
        format!(
            "{path}: cannot unmarshal {} `{}` into {wanted}",
            yaml_kind(value),
            go_display(value)
        ),
    )
}

fn yaml_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "!!null",
        Value::Bool(_) => "!!bool",
        Value::Number(n) if n.is_f64() => "!!float",
        Value::Number(_) => "!!int",
        Value::String(_) => "!!str",
        Value::Sequence(_) => "!!seq",
        Value::Mapping(_) => "!!map",
        Value::Tagged(_) => "tagged value",
    }
}

/// Renders a YAML value the way Go's `%v` renders the decoded value.
fn go_display(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => {
            let parts: Vec<String> = items.iter().map(go_display).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Mapping(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}:{}", go_display(k), go_display(v)))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
        Value::Tagged(tagged) => format!("{} {}", tagged.tag, go_display(&tagged.value)),
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn wildcard_patterns() {
        assert!(wildcard_match("foo*", "foo"));
        assert!(wildcard_match("foo*", "foobar"));
        assert!(!wildcard_match("foo*", "fo"));
        assert!(wildcard_match("bar*b", "barb"));
        assert!(wildcard_match("bar*b", "bar123b"));
        assert!(!wildcard_match("bar*b", "bar123"));
        assert!(!wildcard_match("bar*b", "bab"));
        assert!(wildcard_match("foo*bar*baz", "foo1bar2baz"));
        assert!(wildcard_match("foo*bar*baz", "foobarbaz"));
        assert!(!wildcard_match("foo*bar*baz", "foo1baz"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*a", "aa"));
        assert!(!wildcard_match("a*a", "a"));
        assert!(wildcard_match("exact", "exact"));
        assert!(!wildcard_match("exact", "exactly"));
    }
}
