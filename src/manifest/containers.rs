//! `workspace.containers`: how many containers the job's conversations
//! are spread over, a number or `"auto"` (as many as `run.workers` need at
//! the capacity a container has on this engine, measured at boot: see
//! `workspace::capacity`).

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containers {
    Count(u32),
    Auto,
}

impl Default for Containers {
    fn default() -> Containers {
        Containers::Count(1)
    }
}

impl Containers {
    /// The number given, if one was (not `"auto"`).
    pub fn count(self) -> Option<u32> {
        match self {
            Containers::Count(n) => Some(n),
            Containers::Auto => None,
        }
    }
}

impl fmt::Display for Containers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Containers::Count(n) => write!(f, "{n}"),
            Containers::Auto => f.write_str("\"auto\""),
        }
    }
}

impl Serialize for Containers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Containers::Count(n) => s.serialize_u32(*n),
            Containers::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Containers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Containers, D::Error> {
        struct Words;
        impl Visitor<'_> for Words {
            type Value = Containers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of containers or \"auto\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Containers, E> {
                u32::try_from(v)
                    .map(Containers::Count)
                    .map_err(|_| E::custom(format!("{v} is not a number of containers")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Containers, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Containers, E> {
                match v {
                    "auto" => Ok(Containers::Auto),
                    other => Err(E::custom(format!(
                        "\"{other}\" is not a number of containers or \"auto\""
                    ))),
                }
            }
        }
        d.deserialize_any(Words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        c: Containers,
    }

    #[test]
    fn a_number_or_auto() {
        let c = |text: &str| toml::from_str::<T>(text).map(|t| t.c);
        assert_eq!(c("c = 4").unwrap(), Containers::Count(4));
        assert_eq!(c("c = \"auto\"").unwrap(), Containers::Auto);
        let e = c("c = \"many\"").unwrap_err().to_string();
        assert!(
            e.contains("\"many\" is not a number of containers or \"auto\""),
            "{e}"
        );
        assert!(c("c = -1").is_err());
        assert!(c("c = 1.5")
            .unwrap_err()
            .to_string()
            .contains("a number of containers or \"auto\""));
    }
}
