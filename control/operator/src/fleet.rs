//! The set of appliances rules and BGP peers go to: the `--loxiURL` ones, fixed, and those
//! LoxiURL objects add at run time, published as one immutable snapshot that is swapped whole.

use crate::appliance::Appliance;
use std::sync::{Arc, RwLock};

/// The current appliances. Readers take a snapshot and work on it; a reconcile that started
/// on an older snapshot finishes on it, and the change's full resync brings the new appliances
/// in (level-triggered, so nothing is lost).
#[derive(Debug)]
pub struct Fleet {
    fixed: Vec<Appliance>,
    current: RwLock<Arc<Vec<Appliance>>>,
}

impl Fleet {
    /// A fleet of the `--loxiURL` appliances only.
    pub fn new(fixed: Vec<Appliance>) -> Fleet {
        Fleet {
            current: RwLock::new(Arc::new(fixed.clone())),
            fixed,
        }
    }

    /// Every appliance now.
    pub fn snapshot(&self) -> Arc<Vec<Appliance>> {
        self.current.read().expect("fleet lock").clone()
    }

    /// The `--loxiURL` appliances.
    pub fn fixed(&self) -> &[Appliance] {
        &self.fixed
    }

    /// Makes the set the `--loxiURL` appliances plus `added` (an `added` URL equal to a
    /// `--loxiURL` one is left out). Returns true if the set of URLs changed.
    pub fn set_added(&self, added: Vec<Appliance>) -> bool {
        let mut next = self.fixed.clone();
        for a in added {
            if !next.iter().any(|n| n.url() == a.url()) {
                next.push(a);
            }
        }
        let mut cur = self.current.write().expect("fleet lock");
        let same =
            cur.len() == next.len() && cur.iter().zip(&next).all(|(a, b)| a.url() == b.url());
        if !same {
            *cur = Arc::new(next);
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

    #[test]
    fn added_appliances_follow_the_fixed_ones_without_duplicates() {
        let f = Fleet::new(vec![app("http://127.0.0.1:1")]);
        assert!(!f.set_added(vec![app("http://127.0.0.1:1")]));
        assert!(f.set_added(vec![app("http://127.0.0.1:2"), app("http://127.0.0.1:1")]));
        let urls: Vec<String> = f.snapshot().iter().map(|a| a.url().to_owned()).collect();
        assert_eq!(urls, vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert!(!f.set_added(vec![app("http://127.0.0.1:2")]));
        assert!(f.set_added(vec![]));
        assert_eq!(f.snapshot().len(), 1);
    }
}
