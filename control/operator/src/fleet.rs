//! The set of appliances rules, roles and BGP peers go to: the `--loxiURL` ones (fixed), those
//! discovered from the cluster when `--loxiURL` is empty, and those LoxiURL objects add at run
//! time, published as one immutable snapshot that is swapped whole.

use crate::appliance::Appliance;
use crate::roles::Member;
use std::sync::{Arc, RwLock};

/// The current appliances. Readers take a snapshot and work on it; a reconcile that started
/// on an older snapshot finishes on it, and the change's full resync brings the new appliances
/// in (level-triggered, so nothing is lost).
#[derive(Debug)]
pub struct Fleet {
    fixed: Vec<Appliance>,
    parts: RwLock<Parts>,
}

#[derive(Debug)]
struct Parts {
    discovered: Vec<Appliance>,
    added: Vec<Appliance>,
    current: Arc<Vec<Appliance>>,
}

impl Fleet {
    /// A fleet of the `--loxiURL` appliances only.
    pub fn new(fixed: Vec<Appliance>) -> Fleet {
        Fleet {
            parts: RwLock::new(Parts {
                discovered: Vec::new(),
                added: Vec::new(),
                current: Arc::new(fixed.clone()),
            }),
            fixed,
        }
    }

    /// Every appliance now: fixed, then discovered, then added, each URL once.
    pub fn snapshot(&self) -> Arc<Vec<Appliance>> {
        self.parts.read().expect("fleet lock").current.clone()
    }

    /// The appliances that take part in `--setRoles`: every appliance, in snapshot order (as
    /// kube-loxilb appends LoxiURL appliances to the list its election walks). An appliance
    /// listed twice takes the place of its first listing, and the `--excludeRoleList` of it.
    pub fn role_members(&self) -> Vec<Member> {
        let p = self.parts.read().expect("fleet lock");
        let mut v: Vec<Member> = Vec::with_capacity(p.current.len());
        let listed = self
            .fixed
            .iter()
            .chain(&p.discovered)
            .map(|a| (a, true))
            .chain(p.added.iter().map(|a| (a, false)));
        for (a, excludable) in listed {
            if !v.iter().any(|m| m.appliance.url() == a.url()) {
                v.push(Member {
                    appliance: a.clone(),
                    excludable,
                });
            }
        }
        v
    }

    /// The `--loxiURL` appliances.
    pub fn fixed(&self) -> &[Appliance] {
        &self.fixed
    }

    /// Makes the LoxiURL-added part `added`. Returns true if the set of URLs changed.
    pub fn set_added(&self, added: Vec<Appliance>) -> bool {
        self.update(|p| p.added = added)
    }

    /// Makes the discovered part `discovered`. Returns true if the set of URLs changed.
    pub fn set_discovered(&self, discovered: Vec<Appliance>) -> bool {
        self.update(|p| p.discovered = discovered)
    }

    fn update(&self, change: impl FnOnce(&mut Parts)) -> bool {
        let mut p = self.parts.write().expect("fleet lock");
        change(&mut p);
        let mut next = self.fixed.clone();
        for a in p.discovered.iter().chain(&p.added) {
            if !next.iter().any(|n| n.url() == a.url()) {
                next.push(a.clone());
            }
        }
        let cur = &p.current;
        let same =
            cur.len() == next.len() && cur.iter().zip(&next).all(|(a, b)| a.url() == b.url());
        if !same {
            p.current = Arc::new(next);
        }
        !same
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appliance::{Credentials, EndpointUpdates};

    fn app(u: &str) -> Appliance {
        Appliance::new(u, &Credentials::default(), EndpointUpdates::Replace).unwrap()
    }

    fn urls(f: &Fleet) -> Vec<String> {
        f.snapshot().iter().map(|a| a.url().to_owned()).collect()
    }

    #[test]
    fn added_appliances_follow_the_fixed_ones_without_duplicates() {
        let f = Fleet::new(vec![app("http://127.0.0.1:1")]);
        assert!(!f.set_added(vec![app("http://127.0.0.1:1")]));
        assert!(f.set_added(vec![app("http://127.0.0.1:2"), app("http://127.0.0.1:1")]));
        assert_eq!(urls(&f), vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert!(!f.set_added(vec![app("http://127.0.0.1:2")]));
        assert!(f.set_added(vec![]));
        assert_eq!(f.snapshot().len(), 1);
    }

    #[test]
    fn discovered_appliances_come_and_go_beside_the_added_ones_and_all_join_the_roles() {
        let f = Fleet::new(vec![]);
        assert!(f.set_added(vec![app("http://127.0.0.1:9")]));
        assert!(f.set_discovered(vec![app("http://127.0.0.1:3"), app("http://127.0.0.1:9")]));
        assert_eq!(urls(&f), vec!["http://127.0.0.1:3", "http://127.0.0.1:9"]);
        assert_eq!(
            roles(&f),
            vec!["http://127.0.0.1:3!", "http://127.0.0.1:9!"]
        );
        assert!(!f.set_discovered(vec![app("http://127.0.0.1:3"), app("http://127.0.0.1:9")]));
        assert!(f.set_discovered(vec![]));
        assert_eq!(urls(&f), vec!["http://127.0.0.1:9"]);
        assert_eq!(roles(&f), vec!["http://127.0.0.1:9"]);
    }

    /// The role members' URLs, `!` after those `--excludeRoleList` applies to.
    fn roles(f: &Fleet) -> Vec<String> {
        f.role_members()
            .into_iter()
            .map(|m| {
                format!(
                    "{}{}",
                    m.appliance.url(),
                    if m.excludable { "!" } else { "" }
                )
            })
            .collect()
    }

    #[test]
    fn loxiurl_appliances_join_the_roles_after_the_flag_ones_and_leave_with_their_object() {
        let f = Fleet::new(vec![app("http://127.0.0.1:1")]);
        assert_eq!(roles(&f), vec!["http://127.0.0.1:1!"]);
        f.set_added(vec![app("http://127.0.0.2:1"), app("http://127.0.0.1:1")]);
        assert_eq!(roles(&f), vec!["http://127.0.0.1:1!", "http://127.0.0.2:1"]);
        f.set_added(vec![]);
        assert_eq!(roles(&f), vec!["http://127.0.0.1:1!"]);
    }
}
