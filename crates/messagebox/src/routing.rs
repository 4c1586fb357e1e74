//! Routing: the compiled subscription set and its evaluation.
//!
//! Consistency: every host caches the compiled subscriptions with the
//! routing version they were read at. A publish transaction takes the routing advisory lock
//! in *shared* mode, then (in a new statement, so its snapshot is taken after the lock is
//! held) reads the version and reloads the cache if it moved. A routing change (enlist,
//! unenlist, filter, membership) takes the lock in *exclusive* mode and bumps the version.
//! So a change waits for in-flight publishes, and every publish that commits after the
//! change commits routes with it. Evaluation is in memory: no query per subscription.

use std::collections::BTreeMap;

use crate::filter::Filter;
use crate::Context;

/// Key of the transaction-level advisory lock that orders publishes and routing changes.
pub const ROUTING_LOCK_KEY: i64 = 0x6d62_785f_726f_7574; // "mbx_rout"

/// One subscriber that a message reaches, with the paths that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    pub port_id: i64,
    /// The port's own filter matched.
    pub via_port: bool,
    /// Groups whose filter matched and that list this port (ascending ids).
    pub via_groups: Vec<i64>,
}

#[derive(Debug, Clone)]
pub(crate) struct PortSubscription {
    pub port_id: i64,
    pub filter: Filter,
}

#[derive(Debug, Clone)]
pub(crate) struct GroupSubscription {
    pub group_id: i64,
    pub filter: Filter,
    /// Enlisted member ports (a member that is unenlisted is not routed to).
    pub members: Vec<i64>,
}

/// The compiled subscription set at one routing version.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    pub(crate) version: i64,
    pub(crate) ports: Vec<PortSubscription>,
    pub(crate) groups: Vec<GroupSubscription>,
    /// Ordered ports (their deliveries take a sequence at publish), with how each is
    /// ordered.
    pub(crate) ordered_ports: std::collections::HashMap<i64, OrderedBy>,
    /// Orchestrations: their activations and correlation shapes (process.rs).
    pub(crate) processes: Vec<crate::process::ProcessRoute>,
}

/// How an ordered port keeps its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderedBy {
    /// One sequence for the whole port (`--ordered`).
    Port,
    /// One sequence per value of a promoted property (`--ordered-by PROP`), its keys hashed
    /// into `buckets` leases.
    Key { property: String, buckets: i32 },
}

/// The hash bucket of an ordered-by key: FNV-1a over the key's bytes, modulo `buckets`
/// (stable across processes, versions and platforms: it is stored with each delivery).
pub fn key_bucket(key: &str, buckets: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let n = u64::try_from(buckets.max(1)).unwrap_or(1);
    i32::try_from(h % n).unwrap_or(0)
}

impl RoutingTable {
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Every subscriber the context reaches: one target per port however many paths
    /// match (its own filter, one or more groups), ordered by port id.
    pub fn route(&self, context: &Context) -> Vec<RouteTarget> {
        let lookup = |name: &str| context.promoted(name);
        let mut targets: BTreeMap<i64, RouteTarget> = BTreeMap::new();
        for sub in &self.ports {
            if sub.filter.eval(lookup) {
                targets
                    .entry(sub.port_id)
                    .or_insert_with(|| RouteTarget {
                        port_id: sub.port_id,
                        via_port: false,
                        via_groups: Vec::new(),
                    })
                    .via_port = true;
            }
        }
        for group in &self.groups {
            if group.filter.eval(lookup) {
                for &port_id in &group.members {
                    let t = targets.entry(port_id).or_insert_with(|| RouteTarget {
                        port_id,
                        via_port: false,
                        via_groups: Vec::new(),
                    });
                    if !t.via_groups.contains(&group.group_id) {
                        t.via_groups.push(group.group_id);
                    }
                }
            }
        }
        targets
            .into_values()
            .map(|mut t| {
                t.via_groups.sort_unstable();
                t
            })
            .collect()
    }

    pub fn is_ordered(&self, port_id: i64) -> bool {
        self.ordered_ports.contains_key(&port_id)
    }

    /// How `port_id` is ordered (`None`: not ordered).
    pub fn ordering(&self, port_id: i64) -> Option<&OrderedBy> {
        self.ordered_ports.get(&port_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter;
    use crate::value::Value;

    #[test]
    fn a_key_always_falls_in_the_same_bucket_and_keys_spread() {
        assert_eq!(key_bucket("customer-42", 64), key_bucket("customer-42", 64));
        // FNV-1a of "a" is 0xaf63dc4c8601ec8c: a fixed value, so a stored bucket stays true
        assert_eq!(
            key_bucket("a", 1_000_000),
            (0xaf63_dc4c_8601_ec8c_u64 % 1_000_000) as i32
        );
        assert_eq!(key_bucket("anything", 1), 0);
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let b = key_bucket(&format!("customer-{i}"), 64);
            assert!((0..64).contains(&b));
            seen.insert(b);
        }
        assert_eq!(seen.len(), 64, "1,000 keys reach every one of 64 buckets");
    }

    fn f(text: &str) -> Filter {
        filter::compile(text, &|_| None).unwrap()
    }

    fn ctx(region: &str) -> Context {
        let mut c = Context::new();
        c.promote("Order.Region", Value::String(region.into()))
            .unwrap();
        c
    }

    #[test]
    fn a_port_reached_by_its_filter_and_two_groups_gets_one_target_with_all_paths() {
        let table = RoutingTable {
            version: 1,
            ports: vec![PortSubscription {
                port_id: 7,
                filter: f("Order.Region == 'EU'"),
            }],
            groups: vec![
                GroupSubscription {
                    group_id: 2,
                    filter: f("exists(Order.Region)"),
                    members: vec![7, 8],
                },
                GroupSubscription {
                    group_id: 1,
                    filter: f("Order.Region != 'US'"),
                    members: vec![7],
                },
            ],
            ordered_ports: Default::default(),
            processes: Vec::new(),
        };
        let targets = table.route(&ctx("EU"));
        assert_eq!(
            targets,
            vec![
                RouteTarget {
                    port_id: 7,
                    via_port: true,
                    via_groups: vec![1, 2]
                },
                RouteTarget {
                    port_id: 8,
                    via_port: false,
                    via_groups: vec![2]
                },
            ]
        );
        let targets = table.route(&ctx("US"));
        assert_eq!(targets.len(), 2);
        assert!(targets
            .iter()
            .all(|t| !t.via_port && t.via_groups == vec![2]));
    }

    #[test]
    fn written_properties_are_invisible_to_filters() {
        let table = RoutingTable {
            version: 1,
            ports: vec![PortSubscription {
                port_id: 1,
                filter: f("Order.Region == 'EU'"),
            }],
            ..Default::default()
        };
        let mut c = Context::new();
        c.write("Order.Region", Value::String("EU".into())).unwrap();
        assert!(table.route(&c).is_empty());
    }
}
