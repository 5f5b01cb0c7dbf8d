//! Which Envoy the filter runs in, and what that allows.
//!
//! With `header_fast_path`, the filter holds the body frames that arrive
//! while its rate-limit call is in flight and resumes the request on the
//! verdict, often before the body has ended. Envoy releases without the fix
//! for envoyproxy/envoy#46841 (runtime guard
//! `envoy.reloadable_features.filter_manager_forward_added_data_on_continue`)
//! drop the next body frame in that case. The fix shipped in 1.36.10,
//! 1.37.6, 1.38.4 and 1.39.1, and every release from 1.40.0 has it.
//!
//! Envoy gives a Wasm module its own version through the property
//! `xds.node.user_agent_build_version.version` (`major_number`,
//! `minor_number`, `patch`, each a little-endian integer).

use std::fmt;

/// The property path of each part of Envoy's version.
pub const PROPERTY: [&str; 4] = ["xds", "node", "user_agent_build_version", "version"];

/// The version fields under [`PROPERTY`], in order.
pub const FIELDS: [&str; 3] = ["major_number", "minor_number", "patch"];

/// An Envoy release number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// The version from the three property values (see [`FIELDS`]), each
    /// an integer of at most 8 bytes, little-endian; `None` if one is
    /// missing or malformed.
    pub fn from_properties(parts: [Option<&[u8]>; 3]) -> Option<Version> {
        let number = |bytes: Option<&[u8]>| -> Option<u64> {
            let bytes = bytes?;
            if bytes.is_empty() || bytes.len() > 8 {
                return None;
            }
            let mut le = [0u8; 8];
            le.get_mut(..bytes.len())?.copy_from_slice(bytes);
            Some(u64::from_le_bytes(le))
        };
        let [major, minor, patch] = parts;
        Some(Version {
            major: number(major)?,
            minor: number(minor)?,
            patch: number(patch)?,
        })
    }

    /// Whether this release forwards body frames that arrive after a
    /// filter resumed a request it held (envoyproxy/envoy#46842).
    pub fn resumes_mid_body(&self) -> bool {
        match (self.major, self.minor) {
            (1, 36) => self.patch >= 10,
            (1, 37) => self.patch >= 6,
            (1, 38) => self.patch >= 4,
            (1, 39) => self.patch >= 1,
            (1, minor) => minor >= 40,
            (major, _) => major > 1,
        }
    }
}

/// Why `header_fast_path` cannot be used in this Envoy, or `None` if it can.
pub fn fast_path_refusal(version: Option<Version>) -> Option<String> {
    const FIXED: &str = "1.36.10, 1.37.6, 1.38.4, 1.39.1, 1.40.0 or later";
    match version {
        Some(v) if v.resumes_mid_body() => None,
        Some(v) => Some(format!(
            "`header_fast_path` needs Envoy {FIXED}: Envoy {v} can drop request body data \
             that arrives after the filter resumes a request (envoyproxy/envoy#46841); \
             upgrade Envoy or turn `header_fast_path` off"
        )),
        None => Some(format!(
            "`header_fast_path` needs Envoy {FIXED}, and this Envoy's version cannot be read \
             (property xds.node.user_agent_build_version); turn `header_fast_path` off"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u64, minor: u64, patch: u64) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn reads_little_endian_numbers() {
        let (one, minor, patch) = (1u64.to_le_bytes(), 38u64.to_le_bytes(), 2u32.to_le_bytes());
        let got = Version::from_properties([Some(&one), Some(&minor), Some(&patch)]);
        assert_eq!(got, Some(v(1, 38, 2)));
        assert_eq!(got.map(|v| v.to_string()), Some("1.38.2".to_owned()));
        assert_eq!(
            Version::from_properties([Some(&one), None, Some(&patch)]),
            None
        );
        assert_eq!(
            Version::from_properties([Some(&one), Some(&[]), Some(&patch)]),
            None
        );
        assert_eq!(
            Version::from_properties([Some(&[0; 9]), Some(&minor), Some(&patch)]),
            None
        );
    }

    #[test]
    fn releases_with_the_resume_fix() {
        for (version, fixed) in [
            (v(1, 35, 13), false),
            (v(1, 36, 4), false),
            (v(1, 36, 9), false),
            (v(1, 36, 10), true),
            (v(1, 37, 0), false),
            (v(1, 37, 6), true),
            (v(1, 38, 2), false),
            (v(1, 38, 3), false),
            (v(1, 38, 4), true),
            (v(1, 39, 0), false),
            (v(1, 39, 1), true),
            (v(1, 39, 3), true),
            (v(1, 40, 0), true),
            (v(1, 41, 0), true),
            (v(2, 0, 0), true),
        ] {
            assert_eq!(version.resumes_mid_body(), fixed, "{version}");
            assert_eq!(
                fast_path_refusal(Some(version)).is_none(),
                fixed,
                "{version}"
            );
        }
        let msg = fast_path_refusal(Some(v(1, 38, 2))).unwrap();
        assert!(msg.contains("Envoy 1.38.2 can drop"), "{msg}");
        assert!(fast_path_refusal(None).unwrap().contains("cannot be read"));
    }
}
