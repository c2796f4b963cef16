//! Active/backup roles of the appliances (kube-loxilb's `--setRoles`): probe every appliance's
//! liveness, keep one live appliance MASTER and the others BACKUP, and tell each appliance its
//! role through loxilb's cistate API until it has acknowledged it.

use crate::appliance::{Appliance, CiState};
use futures::future::join_all;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// kube-loxilb probes every appliance this often.
pub const PROBE_PERIOD: Duration = Duration::from_secs(2);

/// The role settings: the VIP sent with every role (kube-loxilb's `--setRoles` value) and the
/// cluster instances the roles are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSettings {
    pub vip: IpAddr,
    /// kube-loxilb sets the default zone's first instance (`llb-inst0`) too when its own zone
    /// is another, so an appliance started with default settings follows the same role.
    pub instances: Vec<String>,
    /// Appliance hosts never to be MASTER (`--excludeRoleList`), for `--loxiURL` and
    /// discovered appliances alike; not for LoxiURL-added ones (see [`Member::excludable`]).
    pub excluded: Vec<String>,
    /// Roles are sent again this often even when nothing changed, so an appliance that
    /// restarted between two probes and forgot its role gets it back.
    pub refresh: Duration,
}

/// An appliance taking part in the election.
#[derive(Debug, Clone)]
pub struct Member {
    pub appliance: Appliance,
    /// Whether `--excludeRoleList` applies: true for `--loxiURL` and discovered appliances,
    /// false for those LoxiURL objects add, which kube-loxilb creates able to take any role.
    pub excludable: bool,
}

/// Per member, whether `--excludeRoleList` keeps it BACKUP.
fn excluded_of(members: &[Member], settings: &RoleSettings) -> Vec<bool> {
    members
        .iter()
        .map(|m| m.excludable && settings.excluded.iter().any(|h| h == m.appliance.host()))
        .collect()
}

/// The instance names kube-loxilb sets roles for in `zone` with one zone instance.
pub fn instances(zone: &str) -> Vec<String> {
    let own = format!("{zone}-inst0");
    if zone == "llb" {
        vec![own]
    } else {
        vec!["llb-inst0".to_owned(), own]
    }
}

/// Keeps the current MASTER while it is alive and eligible; otherwise the first live,
/// eligible appliance in `--loxiURL` order, as kube-loxilb's election does with one instance.
pub fn elect(current: Option<usize>, alive: &[bool], excluded: &[bool]) -> Option<usize> {
    let eligible = |i: usize| alive[i] && !excluded.get(i).copied().unwrap_or(false);
    match current {
        Some(i) if i < alive.len() && eligible(i) => Some(i),
        _ => (0..alive.len()).find(|&i| eligible(i)),
    }
}

/// The role of appliance `i` when `master` is elected.
fn role_of(i: usize, master: Option<usize>) -> &'static str {
    if master == Some(i) {
        "MASTER"
    } else {
        "BACKUP"
    }
}

/// Runs the probes and elections until the task is dropped, over the appliances `members`
/// returns each round, in election order (the `--loxiURL` ones, fixed, or the discovered ones,
/// then those LoxiURL objects add; the last two come and go).
pub async fn run(members: impl Fn() -> Vec<Member>, settings: RoleSettings) {
    // Per appliance URL: alive, and the role it last acknowledged (None: unknown, never set
    // or it was down).
    let mut alive: HashMap<String, bool> = HashMap::new();
    let mut acknowledged: HashMap<String, &'static str> = HashMap::new();
    let mut master: Option<String> = None;
    let mut last_refresh = Instant::now();
    let mut tick = tokio::time::interval(PROBE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let members = members();
        let excluded = excluded_of(&members, &settings);
        let appliances: Vec<Appliance> = members.into_iter().map(|m| m.appliance).collect();
        let urls: Vec<String> = appliances.iter().map(|a| a.url().to_owned()).collect();
        // An appliance that left the set is forgotten; if it comes back it starts unknown.
        alive.retain(|u, _| urls.contains(u));
        acknowledged.retain(|u, _| urls.contains(u));
        let probes = join_all(appliances.iter().map(Appliance::probe)).await;
        let mut up_now = Vec::with_capacity(appliances.len());
        for (a, r) in appliances.iter().zip(&probes) {
            let up = r.is_ok();
            let was = alive.get(a.url()).copied().unwrap_or(false);
            if up != was {
                match r {
                    Ok(()) => log::info!("appliance {} is alive", a.url()),
                    Err(e) => log::warn!("appliance {} is down: {e}", a.url()),
                }
            }
            if !up {
                acknowledged.remove(a.url());
            }
            alive.insert(a.url().to_owned(), up);
            up_now.push(up);
        }
        let current = master
            .as_ref()
            .and_then(|m| urls.iter().position(|u| u == m));
        let elected = elect(current, &up_now, &excluded);
        let elected_url = elected.map(|i| urls[i].clone());
        if elected_url != master {
            match &elected_url {
                Some(m) => log::info!("appliance {m} is now MASTER"),
                None => log::warn!("no live appliance can be MASTER"),
            }
            master = elected_url;
        }
        if last_refresh.elapsed() >= settings.refresh {
            last_refresh = Instant::now();
            acknowledged.clear();
        }
        // The new MASTER last: during a switch two appliances are briefly BACKUP, never MASTER.
        let n = appliances.len();
        let mut order: Vec<usize> = (0..n).filter(|&i| Some(i) != elected).collect();
        order.extend(elected);
        for i in order {
            let a = &appliances[i];
            let role = role_of(i, elected);
            if !up_now[i] || acknowledged.get(a.url()) == Some(&role) {
                continue;
            }
            match push(a, &settings, role).await {
                Ok(()) => {
                    log::info!("appliance {}: role {role} set", a.url());
                    acknowledged.insert(a.url().to_owned(), role);
                }
                // Retried on the next probe round, as nothing was acknowledged.
                Err(e) => log::warn!("appliance {}: setting role {role}: {e}", a.url()),
            }
        }
    }
}

async fn push(
    appliance: &Appliance,
    settings: &RoleSettings,
    role: &str,
) -> Result<(), crate::appliance::ApplianceError> {
    for instance in &settings.instances {
        appliance
            .set_role(&CiState {
                instance: instance.clone(),
                state: role.to_owned(),
                vip: settings.vip.to_string(),
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_stays_while_alive_and_the_first_live_eligible_one_replaces_it() {
        let none = [false, false, false];
        assert_eq!(elect(None, &[true, true, true], &none), Some(0));
        assert_eq!(elect(Some(1), &[true, true, true], &none), Some(1));
        assert_eq!(elect(Some(0), &[false, true, true], &none), Some(1));
        assert_eq!(elect(Some(0), &[false, false, false], &none), None);
        assert_eq!(
            elect(None, &[true, true, true], &[true, false, false]),
            Some(1)
        );
        assert_eq!(elect(Some(0), &[true, true], &[true, false]), Some(1));
    }

    #[test]
    fn the_exclusion_list_keeps_flag_and_discovered_appliances_backup_but_not_loxiurl_ones() {
        let settings = RoleSettings {
            vip: "0.0.0.0".parse().unwrap(),
            instances: instances("llb"),
            excluded: vec!["127.0.0.1".to_owned()],
            refresh: Duration::from_secs(60),
        };
        let member = |u: &str, excludable| Member {
            appliance: Appliance::new(
                u,
                &crate::appliance::Credentials::default(),
                crate::appliance::EndpointUpdates::Replace,
            )
            .unwrap(),
            excludable,
        };
        let members = [
            member("http://127.0.0.1:11111", true),
            member("http://127.0.0.2:11111", true),
            member("http://127.0.0.1:22222", false),
        ];
        let excluded = excluded_of(&members, &settings);
        assert_eq!(excluded, vec![true, false, false]);
        assert_eq!(elect(None, &[true, false, true], &excluded), Some(2));
    }

    #[test]
    fn another_zone_sets_the_default_zone_instance_too() {
        assert_eq!(instances("llb"), vec!["llb-inst0"]);
        assert_eq!(instances("az1"), vec!["llb-inst0", "az1-inst0"]);
        assert_eq!(instances(""), vec!["llb-inst0", "-inst0"]);
    }
}
