//! The in-memory index of an `fs:` store: what every scope holds, as a fold over the records
//! of the log. Values stay on disk; the index keeps where they are ([`ValRef`]), so its size
//! grows with the number of keys and items, not with the bytes stored. The maps are
//! persistent (`imbl`), so a transaction works on an O(1) copy and is dropped on failure.
//!
//! The index also counts its live bytes: the size of the records a base written now would
//! hold. The fold keeps the count, so it is the same in every process and after a reload
//! (compaction decides by it, see `Engine::maintain`).

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
    /// The encoded size of the records a base would write for everything held: the sum of
    /// the scopes' `bytes` and of the `Once` records. Kept by [`Index::fold`] only, so every
    /// fold of the same records (a writer, a process catching up, a reload) counts the same.
    live: u64,
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
    /// The encoded size of the records a base writes for this scope (its `Touch` and one
    /// record per entry), so that clearing a scope uncounts it without walking it.
    bytes: u64,
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

// The sizes of the records a base writes for each kind of entry (see `write_base`), by the
// encoder's own measure. Fields of fixed width count whatever their value.

/// A value as the measure sees it: only its length counts.
fn span(v: ValRef) -> Span {
    Span {
        pos: 0,
        len: v.len as usize,
    }
}

fn measure(rec: Rec<'_, Span>) -> u64 {
    rec.encoded_len()
}

fn touch_len(scope: &[u8]) -> u64 {
    measure(Rec::Touch { scope, at: 0 })
}

fn put_len(scope: &[u8], ns: &[u8], key: &[u8], v: ValRef) -> u64 {
    measure(Rec::Put {
        scope,
        ns,
        key,
        value: span(v),
    })
}

fn append_len(scope: &[u8], ns: &[u8], key: &[u8], v: ValRef) -> u64 {
    measure(Rec::Append {
        scope,
        ns,
        key,
        id: 0,
        value: span(v),
    })
}

fn counter_len(scope: &[u8], ns: &[u8], key: &[u8]) -> u64 {
    measure(Rec::CounterSet {
        scope,
        ns,
        key,
        value: 0,
    })
}

fn item_len(scope: &[u8], item: &Item) -> u64 {
    measure(Rec::Item {
        scope,
        id: 0,
        value: span(item.value),
        attempts: 0,
        visible_at: 0,
        claim: 0,
    })
}

fn dead_len(scope: &[u8], dead: &Dead) -> u64 {
    measure(Rec::Dead {
        scope,
        value: span(dead.value),
        attempts: 0,
        at: 0,
    })
}

fn once_len(key: &[u8], once: &OnceRecord) -> u64 {
    measure(Rec::Once {
        key,
        fingerprint: &once.fingerprint,
        reply: span(once.reply),
        at: 0,
    })
}

/// The scope named `name`, created (and its `Touch` counted in `live`) when missing. Free
/// functions over the index's fields, not methods, so that a scope and the total can be
/// changed together without looking the scope up twice.
fn scope_entry<'a>(
    scopes: &'a mut HashMap<Vec<u8>, Scope>,
    live: &mut u64,
    name: &[u8],
) -> &'a mut Scope {
    scopes.entry(name.to_vec()).or_insert_with(|| {
        let bytes = touch_len(name);
        *live += bytes;
        Scope {
            bytes,
            ..Scope::default()
        }
    })
}

fn existing<'a>(
    scopes: &'a mut HashMap<Vec<u8>, Scope>,
    name: &[u8],
) -> Result<&'a mut Scope, FoldError> {
    scopes
        .get_mut(name)
        .ok_or_else(|| "refers to a scope that does not exist".to_string())
}

/// Counts `added` bytes more and `gone` fewer in scope `s` and in `live`, the index's total.
/// Saturating: a miscount would misjudge when to compact, never lose data (the tests recount
/// from scratch to keep it exact).
fn count(live: &mut u64, s: &mut Scope, added: u64, gone: u64) {
    s.bytes = (s.bytes + added).saturating_sub(gone);
    *live = (*live + added).saturating_sub(gone);
}

/// What a base always holds besides the entries: the sequences and the end mark.
fn fixed_len() -> u64 {
    measure(Rec::Seq {
        log: 0,
        item: 0,
        claim: 0,
    }) + measure(Rec::End)
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
                scope_entry(&mut self.scopes, &mut self.live, scope).touched_ms = when;
            }
            Rec::Put {
                scope,
                ns,
                key,
                value,
            } => {
                let value = at(value);
                let s = scope_entry(&mut self.scopes, &mut self.live, scope);
                let old = s
                    .state
                    .entry(ns.to_vec())
                    .or_default()
                    .insert(key.to_vec(), value);
                let gone = old.map_or(0, |old| put_len(scope, ns, key, old));
                count(&mut self.live, s, put_len(scope, ns, key, value), gone);
            }
            Rec::Del { scope, ns, key } => {
                if let Some(s) = self.scopes.get_mut(scope)
                    && let Some(map) = s.state.get_mut(ns)
                {
                    let old = map.remove(key);
                    if map.is_empty() {
                        s.state.remove(ns);
                    }
                    if let Some(old) = old {
                        count(&mut self.live, s, 0, put_len(scope, ns, key, old));
                    }
                }
            }
            Rec::DropNs { scope, ns } => {
                // Walks the namespace (a per-namespace count would cost every put a lookup).
                if let Some(s) = self.scopes.get_mut(scope)
                    && let Some(map) = s.state.remove(ns)
                {
                    let gone = map.iter().map(|(k, v)| put_len(scope, ns, k, *v)).sum();
                    count(&mut self.live, s, 0, gone);
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
                let value = at(value);
                let s = scope_entry(&mut self.scopes, &mut self.live, scope);
                s.logs
                    .entry(pair(ns, key))
                    .or_default()
                    .push_back((id, value));
                count(&mut self.live, s, append_len(scope, ns, key, value), 0);
            }
            Rec::CounterSet {
                scope,
                ns,
                key,
                value,
            } => {
                // A counter's record has one size whatever its value.
                let s = scope_entry(&mut self.scopes, &mut self.live, scope);
                if s.counters.insert(pair(ns, key), value).is_none() {
                    count(&mut self.live, s, counter_len(scope, ns, key), 0);
                }
            }
            Rec::CounterDel { scope, ns, key } => {
                if let Some(s) = self.scopes.get_mut(scope)
                    && s.counters.remove(&pair(ns, key)).is_some()
                {
                    count(&mut self.live, s, 0, counter_len(scope, ns, key));
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
                let s = scope_entry(&mut self.scopes, &mut self.live, scope);
                let claim = (claim != 0).then_some(claim);
                if let Some(c) = claim {
                    s.claims.insert(c, id);
                }
                let item = Item {
                    value: at(value),
                    attempts,
                    visible_at,
                    claim,
                };
                let old = s.queue.insert(id, item);
                let gone = old.map_or(0, |old| item_len(scope, &old));
                count(&mut self.live, s, item_len(scope, &item), gone);
            }
            Rec::Remove { scope, id } => {
                let s = existing(&mut self.scopes, scope)?;
                let item = s
                    .queue
                    .remove(&id)
                    .ok_or_else(|| format!("removes queue item {id}, which is not there"))?;
                if let Some(c) = item.claim {
                    s.claims.remove(&c);
                }
                count(&mut self.live, s, 0, item_len(scope, &item));
            }
            Rec::Claim {
                scope,
                id,
                claim,
                visible_at,
            } => {
                self.seq.last_claim_id = self.seq.last_claim_id.max(claim);
                let s = existing(&mut self.scopes, scope)?;
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
                let s = existing(&mut self.scopes, scope)?;
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
                let s = existing(&mut self.scopes, scope)?;
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
                let s = existing(&mut self.scopes, scope)?;
                let item = s
                    .queue
                    .remove(&id)
                    .ok_or_else(|| format!("buries queue item {id}, which is not there"))?;
                if let Some(c) = item.claim {
                    s.claims.remove(&c);
                }
                let dead = Dead {
                    value: item.value,
                    attempts: item.attempts,
                    at: when,
                };
                s.dead.push_back(dead);
                count(
                    &mut self.live,
                    s,
                    dead_len(scope, &dead),
                    item_len(scope, &item),
                );
            }
            Rec::Dead {
                scope,
                value,
                attempts,
                at: when,
            } => {
                let dead = Dead {
                    value: at(value),
                    attempts,
                    at: when,
                };
                let s = scope_entry(&mut self.scopes, &mut self.live, scope);
                s.dead.push_back(dead);
                count(&mut self.live, s, dead_len(scope, &dead), 0);
            }
            Rec::QueueClear { scope } => {
                if let Some(s) = self.scopes.get_mut(scope) {
                    let queue = std::mem::take(&mut s.queue);
                    s.claims = HashMap::new();
                    let dead = std::mem::take(&mut s.dead);
                    let gone = queue.values().map(|i| item_len(scope, i)).sum::<u64>()
                        + dead.iter().map(|d| dead_len(scope, d)).sum::<u64>();
                    count(&mut self.live, s, 0, gone);
                }
            }
            Rec::Clear { scope } => {
                if let Some(s) = self.scopes.remove(scope) {
                    self.live = self.live.saturating_sub(s.bytes);
                }
            }
            Rec::Once {
                key,
                fingerprint,
                reply,
                at: when,
            } => {
                let once = OnceRecord {
                    fingerprint: fingerprint.to_vec(),
                    reply: at(reply),
                    at: when,
                };
                let added = once_len(key, &once);
                let old = self.once.insert(key.to_vec(), once);
                let gone = old.map_or(0, |old| once_len(key, &old));
                self.live = (self.live + added).saturating_sub(gone);
            }
            Rec::ExpireOnce { cutoff } => {
                let mut gone = 0;
                self.once.retain(|key, r| {
                    let keep = r.at >= cutoff;
                    if !keep {
                        gone += once_len(key, r);
                    }
                    keep
                });
                self.live = self.live.saturating_sub(gone);
            }
            Rec::Seq { log, item, claim } => {
                self.seq.last_log_id = self.seq.last_log_id.max(log);
                self.seq.last_item_id = self.seq.last_item_id.max(item);
                self.seq.last_claim_id = self.seq.last_claim_id.max(claim);
            }
            Rec::At { .. } | Rec::Seal | Rec::End => {}
        }
        Ok(())
    }

    /// The encoded size of the base a compaction would write now (frame headers aside).
    pub fn live_bytes(&self) -> u64 {
        self.live + fixed_len()
    }

    /// The live bytes counted from scratch, walking everything (tests check the running
    /// count against it).
    #[cfg(test)]
    pub fn recount(&self) -> u64 {
        let mut total = fixed_len();
        for (scope, s) in self.scopes.iter() {
            let mut bytes = touch_len(scope);
            for (ns, map) in s.state.iter() {
                bytes += map
                    .iter()
                    .map(|(k, v)| put_len(scope, ns, k, *v))
                    .sum::<u64>();
            }
            for ((ns, key), log) in s.logs.iter() {
                bytes += log
                    .iter()
                    .map(|(_, v)| append_len(scope, ns, key, *v))
                    .sum::<u64>();
            }
            for (ns, key) in s.counters.keys() {
                bytes += counter_len(scope, ns, key);
            }
            bytes += s.queue.values().map(|i| item_len(scope, i)).sum::<u64>();
            bytes += s.dead.iter().map(|d| dead_len(scope, d)).sum::<u64>();
            assert_eq!(s.bytes, bytes, "the running count of scope {scope:?}");
            total += bytes;
        }
        total + self.once.iter().map(|(k, r)| once_len(k, r)).sum::<u64>()
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
