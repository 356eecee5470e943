//! Sharding a job across machines: `--shard I/N` runs only the tasks whose
//! id hashes to shard I of N. The hash is SHA-256 of the id, so every
//! machine, platform and convoy version agrees on the split without talking
//! to the others, and the shards' run directories can be merged afterwards
//! (`journal::merge`).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Shard `index` of `count`, numbered from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShardError {
    #[error("--shard `{0}`: expected I/N such as 0/4")]
    Syntax(String),
    #[error("--shard `{0}`: the count must be at least 1")]
    ZeroCount(String),
    #[error("--shard `{0}`: the index must be below the count (shards are numbered 0..N-1)")]
    IndexTooLarge(String),
}

impl Shard {
    /// Whether the task `id` belongs to this shard.
    pub fn contains(&self, id: &str) -> bool {
        // The fields are public, so a zero count can reach here without
        // going through `from_str`; such a shard holds nothing rather than
        // dividing by zero.
        shard_of(id, self.count) == Some(self.index)
    }
}

/// The shard of `id` among `count`: the first 8 bytes of SHA-256 of its
/// UTF-8 bytes, big-endian, modulo `count`. `None` if `count` is 0.
fn shard_of(id: &str, count: u32) -> Option<u32> {
    let digest = Sha256::digest(id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    let rem = u64::from_be_bytes(head).checked_rem(u64::from(count))?;
    // Below `count`, which is a u32.
    u32::try_from(rem).ok()
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let syntax = || ShardError::Syntax(s.to_string());
        // Plain digits only: `u32::from_str` would also take "+1".
        let number = |part: &str| -> Result<u32, ShardError> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            part.parse().map_err(|_| syntax())
        };
        let (index, count) = s.split_once('/').ok_or_else(syntax)?;
        let (index, count) = (number(index)?, number(count)?);
        if count == 0 {
            return Err(ShardError::ZeroCount(s.to_string()));
        }
        if index >= count {
            return Err(ShardError::IndexTooLarge(s.to_string()));
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let s: Shard = "3/4".parse().unwrap();
        assert_eq!(s, Shard { index: 3, count: 4 });
        assert_eq!(s.to_string(), "3/4");
        assert_eq!("0/1".parse::<Shard>().unwrap().to_string(), "0/1");
    }

    #[test]
    fn rejects_bad_shards_with_reasons() {
        let err = |s: &str| s.parse::<Shard>().unwrap_err().to_string();
        assert_eq!(
            err("4/4"),
            "--shard `4/4`: the index must be below the count (shards are numbered 0..N-1)"
        );
        assert_eq!(err("0/0"), "--shard `0/0`: the count must be at least 1");
        for bad in [
            "",
            "1",
            "1/",
            "/4",
            "a/4",
            "+1/4",
            "-1/4",
            "1/4/5",
            " 1/4",
            "99999999999/4",
        ] {
            assert_eq!(
                err(bad),
                format!("--shard `{bad}`: expected I/N such as 0/4")
            );
        }
    }

    /// Pins the hash: if this changes, shards of one job run by different
    /// convoy versions would overlap or miss tasks. Expected values computed
    /// independently with `sha256sum`.
    #[test]
    fn assignment_is_stable() {
        // sha256("task-1") starts 7afaa346b4bf92bf.
        assert_eq!(shard_of("task-1", 4), Some(3));
        assert_eq!(shard_of("task-1", 7), Some(0));
        // sha256("hello") starts 2cf24dba5fb0a30e.
        assert_eq!(shard_of("hello", 10), Some(2));
        assert!(Shard { index: 3, count: 4 }.contains("task-1"));
        assert!(!Shard { index: 0, count: 4 }.contains("task-1"));
    }

    #[test]
    fn zero_count_holds_nothing_instead_of_panicking() {
        assert!(!Shard { index: 0, count: 0 }.contains("task-1"));
    }

    #[test]
    fn every_id_lands_in_exactly_one_shard_and_shards_are_balanced() {
        let n = 4;
        let shards: Vec<Shard> = (0..n).map(|index| Shard { index, count: n }).collect();
        let mut sizes = vec![0usize; n as usize];
        for i in 0..10_000 {
            let id = i.to_string();
            let holders: Vec<&Shard> = shards.iter().filter(|s| s.contains(&id)).collect();
            assert_eq!(holders.len(), 1, "id {id}");
            sizes[holders[0].index as usize] += 1;
        }
        // 2500 expected each; a fair hash stays well within 10%.
        for size in &sizes {
            assert!((2250..=2750).contains(size), "{sizes:?}");
        }
    }
}
