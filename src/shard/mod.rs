//! Sharded runs: one run split over N processes or pods that each send their
//! share ([`Shard`]: concurrency, rate, requests and dataset units), start
//! together ([`clock`]: `--start-at` and the clock-offset estimate), and are
//! put back into one run folder by an exact merge ([`merge`]). The local
//! launcher ([`launch`]) and the Kubernetes manifests ([`k8s`]) drive that
//! same path.

pub mod clock;
pub mod k8s;
pub mod launch;
pub mod merge;

use crate::config::RunConfig;
use crate::schedule::Schedule;
use crate::units::BadValue;
use serde::{Deserialize, Serialize};

/// Most shards a run may have (the shard index takes two bytes of each trace id).
pub const MAX_SHARDS: u32 = 65_536;

/// This process is shard `index` of `count` (`--shard I/N`, 0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = BadValue;
    fn from_str(text: &str) -> Result<Self, BadValue> {
        let bad = || BadValue(format!("`{text}` is not I/N (shard I of N, 0 <= I < N)"));
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = index.trim().parse().map_err(|_| bad())?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        if count > MAX_SHARDS {
            return Err(BadValue(format!("`{text}`: at most {MAX_SHARDS} shards")));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// This shard's part of `total` things split over the shards: ⌊total/N⌋,
    /// plus one for the first `total mod N` shards.
    pub fn share(&self, total: u64) -> u64 {
        let (n, i) = (u64::from(self.count), u64::from(self.index));
        total / n + u64::from(i < total % n)
    }

    /// This shard's load: concurrency, batch size and the open loop's cap
    /// split by [`Shard::share`]; an open-loop rate R becomes R/N (the union
    /// of N independent Poisson streams of rate R/N is Poisson at R).
    pub fn schedule(&self, schedule: &Schedule) -> Schedule {
        let share = |n: usize| self.share(n as u64) as usize;
        match schedule {
            Schedule::Closed { concurrency } => Schedule::Closed {
                concurrency: share(*concurrency),
            },
            Schedule::Batch { size } => Schedule::Batch { size: share(*size) },
            Schedule::Open {
                rate,
                arrival,
                burstiness,
                max_concurrency,
            } => Schedule::Open {
                rate: rate / f64::from(self.count),
                arrival: *arrival,
                burstiness: *burstiness,
                max_concurrency: max_concurrency.map(share),
            },
            // A trace's requests keep their timestamps; each shard sends its share of them.
            Schedule::Replay { max_concurrency } => Schedule::Replay {
                max_concurrency: max_concurrency.map(share),
            },
        }
    }

    /// The seed of this shard's arrivals: the run's seed for one shard, else
    /// one derived from the run's seed and the index (so each shard's stream
    /// is independent, and the same on every rerun).
    pub fn arrival_seed(&self, seed: u64) -> u64 {
        if self.count == 1 {
            seed
        } else {
            splitmix64(seed ^ splitmix64(u64::from(self.index) + 1))
        }
    }

    /// Whether the workload's request at global position `index` is this
    /// shard's, for workloads whose every request is its own unit (synthetic
    /// prompts): round robin, which splits any count as [`Shard::share`] does.
    pub fn owns_index(&self, index: u64) -> bool {
        index % u64::from(self.count) == u64::from(self.index)
    }

    /// The prefix of this shard's request ids (`RUN_ID-sI`), so that they say
    /// which shard sent them and stay unique across shards.
    pub fn request_id_prefix(&self, run_id: &str) -> String {
        format!("{run_id}-s{}", self.index)
    }

    /// The folder a shard writes: `RUN_ID.shard-I-of-N`, beside the merged `RUN_ID`.
    pub fn folder_name(&self, run_id: &str) -> String {
        format!("{run_id}.shard-{}-of-{}", self.index, self.count)
    }

    /// The two leading bytes of this shard's trace ids (the index, big-endian).
    pub fn trace_prefix(&self) -> [u8; 2] {
        (self.index as u16).to_be_bytes()
    }

    /// Checks that every shard gets some of the load (one stream at least).
    pub fn check_split(count: u32, schedule: &Schedule) -> anyhow::Result<()> {
        let (what, n) = match schedule {
            Schedule::Closed { concurrency } => ("--concurrency", *concurrency),
            Schedule::Batch { size } => ("--batch-size", *size),
            Schedule::Open {
                max_concurrency: Some(n),
                ..
            }
            | Schedule::Replay {
                max_concurrency: Some(n),
            } => ("--max-concurrency", *n),
            Schedule::Open { .. } | Schedule::Replay { .. } => return Ok(()),
        };
        if (n as u64) < u64::from(count) {
            anyhow::bail!(
                "{what} {n} split over {count} shards leaves some shard nothing to send: \
                 give at least one per shard"
            );
        }
        Ok(())
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit function of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The settings that make two processes shards of one run, hashed: the run's
/// checked configuration without what differs between its shards or does not
/// change what is sent (`out`, `run_id`, `tui`, `db`, `shard`, `start_at`).
/// Written to `run.json` as `config_hash`; the merge refuses shards whose
/// hashes differ.
pub fn config_hash(config: &RunConfig) -> String {
    let mut value = serde_json::to_value(config).expect("the config serializes");
    if let Some(map) = value.as_object_mut() {
        for key in ["out", "run_id", "tui", "db", "shard", "start_at"] {
            map.remove(key);
        }
    }
    // serde_json's maps are sorted by key, so the text is canonical.
    format!("{:016x}", crate::hash::fnv1a(value.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Arrival;

    fn shard(index: u32, count: u32) -> Shard {
        Shard { index, count }
    }

    #[test]
    fn shards_parse_and_bad_ones_say_why() {
        assert_eq!("2/4".parse::<Shard>().unwrap(), shard(2, 4));
        assert_eq!("0/1".parse::<Shard>().unwrap().to_string(), "0/1");
        for bad in ["4/4", "1", "a/2", "0/0", "-1/2"] {
            let e = bad.parse::<Shard>().unwrap_err().0;
            assert!(e.contains("I/N"), "{bad}: {e}");
        }
        assert!("0/70000"
            .parse::<Shard>()
            .unwrap_err()
            .0
            .contains("at most"));
    }

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for (total, count) in [(10, 4), (3, 4), (1000, 7), (0, 3), (5, 1)] {
            let shares: Vec<u64> = (0..count).map(|i| shard(i, count).share(total)).collect();
            assert_eq!(shares.iter().sum::<u64>(), total, "{total} over {count}");
            assert!(shares.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
        }
        assert_eq!(
            (0..4).map(|i| shard(i, 4).share(10)).collect::<Vec<_>>(),
            [3, 3, 2, 2],
            "the first C mod N shards get one more"
        );
    }

    #[test]
    fn round_robin_gives_each_shard_its_share_of_any_count() {
        for total in [0u64, 1, 9, 10, 11, 1001] {
            for i in 0..4 {
                let s = shard(i, 4);
                let owned = (0..total).filter(|g| s.owns_index(*g)).count() as u64;
                assert_eq!(owned, s.share(total));
            }
        }
    }

    #[test]
    fn schedules_split_and_rates_divide() {
        let closed = Schedule::Closed { concurrency: 10 };
        assert_eq!(
            shard(1, 4).schedule(&closed),
            Schedule::Closed { concurrency: 3 }
        );
        assert_eq!(
            shard(3, 4).schedule(&closed),
            Schedule::Closed { concurrency: 2 }
        );
        let open = Schedule::Open {
            rate: 100.0,
            arrival: Arrival::Gamma,
            burstiness: 0.5,
            max_concurrency: Some(9),
        };
        assert_eq!(
            shard(0, 4).schedule(&open),
            Schedule::Open {
                rate: 25.0,
                arrival: Arrival::Gamma,
                burstiness: 0.5,
                max_concurrency: Some(3)
            }
        );
        assert!(Shard::check_split(4, &closed).is_ok());
        let e = Shard::check_split(4, &Schedule::Closed { concurrency: 3 }).unwrap_err();
        assert!(e.to_string().contains("--concurrency 3"), "{e}");
    }

    #[test]
    fn arrival_seeds_are_the_runs_for_one_shard_and_distinct_otherwise() {
        assert_eq!(shard(0, 1).arrival_seed(42), 42);
        let seeds: std::collections::BTreeSet<u64> =
            (0..8).map(|i| shard(i, 8).arrival_seed(42)).collect();
        assert_eq!(seeds.len(), 8);
        assert_eq!(shard(3, 8).arrival_seed(42), shard(3, 8).arrival_seed(42));
        assert_ne!(shard(3, 8).arrival_seed(42), shard(3, 8).arrival_seed(43));
    }
}
