//! The in-memory index of an `fs:` store: what every scope holds, as a fold over the records
//! of the log. Values stay on disk; the index keeps where they are ([`ValRef`]), so its size
//! grows with the number of keys and items, not with the bytes stored. The maps are
//! persistent (`imbl`), so a transaction works on an O(1) copy and is dropped on failure.

use imbl::{HashMap, OrdMap, Vector};

use super::record::{Rec, Span};

/// Where a value lies: a segment (a per-process file number), an offset and a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ValRef {
    pub file: u32,
    pub offset: u64,
    pub len: u32,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Index {
    pub scopes: HashMap<Vec<u8>, Scope>,
    pub seq: Sequences,
    pub once: HashMap<Vec<u8>, OnceRecord>,
}

/// Store-wide sequences: ids are never reused, even after a scope is cleared.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sequences {
    pub last_log_id: i64,
    pub last_item_id: i64,
    pub last_claim_id: i64,
}

#[derive(Clone, Debug)]
pub(crate) struct OnceRecord {
    pub fingerprint: Vec<u8>,
    pub reply: ValRef,
    pub at: i64,
}

/// A log: `(id, where its value is)` in id order.
pub(crate) type Log = Vector<(i64, ValRef)>;

#[derive(Clone, Debug, Default)]
pub(crate) struct Scope {
    pub touched_ms: i64,
    pub state: HashMap<Vec<u8>, OrdMap<Vec<u8>, ValRef>>,
    pub logs: HashMap<(Vec<u8>, Vec<u8>), Log>,
    pub counters: HashMap<(Vec<u8>, Vec<u8>), i64>,
    pub queue: OrdMap<i64, Item>,
    /// claim id → item id, for the items currently claimed.
    pub claims: HashMap<i64, i64>,
    pub dead: Vector<Dead>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub value: ValRef,
    pub attempts: u32,
    /// Claimed until this time; 0 when never claimed or released.
    pub visible_at: i64,
    pub claim: Option<i64>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Dead {
    pub value: ValRef,
    pub attempts: u32,
    pub at: i64,
}

/// Why a record cannot be folded: it refers to something the log never created. A correct
/// log never has one; reading it means the log is damaged or was written by another program.
pub(crate) type FoldError = String;

fn pair(ns: &[u8], key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (ns.to_vec(), key.to_vec())
}

impl Index {
    /// Applies one record; `at` turns a value's span in the payload into its place on disk.
    pub fn fold(
        &mut self,
        rec: &Rec<'_, Span>,
        at: impl Fn(Span) -> ValRef,
    ) -> Result<(), FoldError> {
        match *rec {
            Rec::Touch { scope, at: when } => {
                self.scopes.entry(scope.to_vec()).or_default().touched_ms = when;
            }
            Rec::Put {
                scope,
                ns,
                key,
                value,
            } => {
                self.scope(scope)
                    .state
                    .entry(ns.to_vec())
                    .or_default()
                    .insert(key.to_vec(), at(value));
            }
            Rec::Del { scope, ns, key } => {
                if let Some(map) = self.scopes.get_mut(scope).and_then(|s| s.state.get_mut(ns)) {
                    map.remove(key);
                    if map.is_empty() {
                        self.scope(scope).state.remove(ns);
                    }
                }
            }
            Rec::DropNs { scope, ns } => {
                if let Some(s) = self.scopes.get_mut(scope) {
                    s.state.remove(ns);
                }
            }
            Rec::Append {
                scope,
                ns,
                key,
                id,
                value,
            } => {
                self.seq.last_log_id = self.seq.last_log_id.max(id);
                self.scope(scope)
                    .logs
                    .entry(pair(ns, key))
                    .or_default()
                    .push_back((id, at(value)));
            }
            Rec::CounterSet {
                scope,
                ns,
                key,
                value,
            } => {
                self.scope(scope).counters.insert(pair(ns, key), value);
            }
            Rec::CounterDel { scope, ns, key } => {
                if let Some(s) = self.scopes.get_mut(scope) {
                    s.counters.remove(&pair(ns, key));
                }
            }
            Rec::Item {
                scope,
                id,
                value,
                attempts,
                visible_at,
                claim,
            } => {
                self.seq.last_item_id = self.seq.last_item_id.max(id);
                let s = self.scope(scope);
                let claim = (claim != 0).then_some(claim);
                if let Some(c) = claim {
                    s.claims.insert(c, id);
                }
                s.queue.insert(
                    id,
                    Item {
                        value: at(value),
                        attempts,
                        visible_at,
                        claim,
                    },
                );
            }
            Rec::Remove { scope, id } => {
                let s = self.existing(scope)?;
                let item = s
                    .queue
                    .remove(&id)
                    .ok_or_else(|| format!("removes queue item {id}, which is not there"))?;
                if let Some(c) = item.claim {
                    s.claims.remove(&c);
                }
            }
            Rec::Claim {
                scope,
                id,
                claim,
                visible_at,
            } => {
                self.seq.last_claim_id = self.seq.last_claim_id.max(claim);
                let s = self.existing(scope)?;
                let item = s
                    .queue
                    .get_mut(&id)
                    .ok_or_else(|| format!("claims queue item {id}, which is not there"))?;
                let stale = item.claim.replace(claim);
                item.attempts = item.attempts.saturating_add(1);
                item.visible_at = visible_at;
                if let Some(stale) = stale {
                    s.claims.remove(&stale);
                }
                s.claims.insert(claim, id);
            }
            Rec::Release { scope, id } => {
                let s = self.existing(scope)?;
                let item = s
                    .queue
                    .get_mut(&id)
                    .ok_or_else(|| format!("releases queue item {id}, which is not there"))?;
                item.visible_at = 0;
                if let Some(c) = item.claim.take() {
                    s.claims.remove(&c);
                }
            }
            Rec::Extend {
                scope,
                id,
                visible_at,
            } => {
                let s = self.existing(scope)?;
                let item = s
                    .queue
                    .get_mut(&id)
                    .ok_or_else(|| format!("extends queue item {id}, which is not there"))?;
                item.visible_at = visible_at;
            }
            Rec::Bury {
                scope,
                id,
                at: when,
            } => {
                let s = self.existing(scope)?;
                let item = s
                    .queue
                    .remove(&id)
                    .ok_or_else(|| format!("buries queue item {id}, which is not there"))?;
                if let Some(c) = item.claim {
                    s.claims.remove(&c);
                }
                s.dead.push_back(Dead {
                    value: item.value,
                    attempts: item.attempts,
                    at: when,
                });
            }
            Rec::Dead {
                scope,
                value,
                attempts,
                at: when,
            } => {
                self.scope(scope).dead.push_back(Dead {
                    value: at(value),
                    attempts,
                    at: when,
                });
            }
            Rec::QueueClear { scope } => {
                if let Some(s) = self.scopes.get_mut(scope) {
                    s.queue = OrdMap::new();
                    s.claims = HashMap::new();
                    s.dead = Vector::new();
                }
            }
            Rec::Clear { scope } => {
                self.scopes.remove(scope);
            }
            Rec::Once {
                key,
                fingerprint,
                reply,
                at: when,
            } => {
                self.once.insert(
                    key.to_vec(),
                    OnceRecord {
                        fingerprint: fingerprint.to_vec(),
                        reply: at(reply),
                        at: when,
                    },
                );
            }
            Rec::ExpireOnce { cutoff } => self.once.retain(|_, r| r.at >= cutoff),
            Rec::Seq { log, item, claim } => {
                self.seq.last_log_id = self.seq.last_log_id.max(log);
                self.seq.last_item_id = self.seq.last_item_id.max(item);
                self.seq.last_claim_id = self.seq.last_claim_id.max(claim);
            }
            Rec::At { .. } | Rec::Seal | Rec::End => {}
        }
        Ok(())
    }

    fn scope(&mut self, scope: &[u8]) -> &mut Scope {
        self.scopes.entry(scope.to_vec()).or_default()
    }

    fn existing(&mut self, scope: &[u8]) -> Result<&mut Scope, FoldError> {
        self.scopes
            .get_mut(scope)
            .ok_or_else(|| "refers to a scope that does not exist".to_string())
    }
}

impl Scope {
    /// How many entries the scope holds: state pairs, log entries, counters, queue items
    /// (claimed ones included) and dead letters. What `clear` answers.
    pub fn entries(&self) -> u64 {
        let state: usize = self.state.values().map(|m| m.len()).sum();
        let logs: usize = self.logs.values().map(|l| l.len()).sum();
        (state + logs + self.counters.len() + self.queue.len() + self.dead.len()) as u64
    }

    /// The id of the oldest item that may be delivered now, if any, and the exhausted items
    /// in front of it that must be buried first (in order).
    pub fn next_visible(&self, now: i64, max_attempts: u32) -> (Vec<i64>, Option<i64>) {
        let mut buried = Vec::new();
        // The head is visible unless it is claimed: look at it before walking the queue.
        let candidates: Box<dyn Iterator<Item = (&i64, &Item)>> = match self.queue.get_min() {
            Some((id, item)) if item.visible_at <= now => Box::new(
                std::iter::once((id, item)).chain(
                    self.queue
                        .range((std::ops::Bound::Excluded(*id), std::ops::Bound::Unbounded)),
                ),
            ),
            _ => Box::new(self.queue.iter()),
        };
        for (&id, item) in candidates {
            if item.visible_at > now {
                continue;
            }
            if item.attempts < max_attempts {
                return (buried, Some(id));
            }
            buried.push(id);
        }
        (buried, None)
    }

    /// A counter's value, if it exists.
    pub fn counter(&self, ns: &[u8], key: &[u8]) -> Option<i64> {
        self.counters.get(&pair(ns, key)).copied()
    }

    /// The id of the item a live claim refers to.
    pub fn live_claim(&self, claim_id: i64, now: i64) -> Option<i64> {
        let item_id = *self.claims.get(&claim_id)?;
        let item = self.queue.get(&item_id)?;
        (item.claim == Some(claim_id) && item.visible_at > now).then_some(item_id)
    }
}
