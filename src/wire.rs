//! Small decoding helpers that make our params errors read like upstream's. Upstream decodes
//! params from a `serde_json::Value`, whose enum errors differ from decoding the text
//! directly (`invalid type: null, expected string or map` rather than `expected value`).
//! It knows no method and owns no state.

use std::fmt;

use serde::de::{self, Deserializer, Unexpected, Visitor};

/// Decodes a string naming one of `variants` and returns its index, with serde's
/// `unknown variant` message for other strings and upstream's wording for other types.
pub fn unit_variant<'de, D: Deserializer<'de>>(
    d: D,
    variants: &'static [&'static str],
) -> Result<usize, D::Error> {
    struct VariantVisitor(&'static [&'static str]);
    impl<'de> Visitor<'de> for VariantVisitor {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("string or map")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
            self.0.iter().position(|name| *name == v).ok_or_else(|| E::unknown_variant(v, self.0))
        }
        fn visit_unit<E: de::Error>(self) -> Result<usize, E> {
            Err(E::invalid_type(Unexpected::Unit, &self))
        }
    }
    d.deserialize_any(VariantVisitor(variants))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Policy(usize);
    impl<'de> serde::Deserialize<'de> for Policy {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            unit_variant(d, &["follow", "stop"]).map(Policy)
        }
    }

    fn decode(json: &str) -> Result<usize, String> {
        serde_json::from_str::<Policy>(json).map(|p| p.0).map_err(|e| {
            let text = e.to_string();
            let position = format!(" at line {} column {}", e.line(), e.column());
            text.strip_suffix(&position).unwrap_or(&text).to_owned()
        })
    }

    #[test]
    fn errors_read_like_upstream() {
        assert_eq!(decode(r#""stop""#), Ok(1));
        assert_eq!(decode("null").unwrap_err(), "invalid type: null, expected string or map");
        assert_eq!(decode("2").unwrap_err(), "invalid type: integer `2`, expected string or map");
        assert_eq!(
            decode(r#""x""#).unwrap_err(),
            "unknown variant `x`, expected `follow` or `stop`"
        );
    }
}
