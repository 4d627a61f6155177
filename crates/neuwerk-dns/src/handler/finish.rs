//! The query path after the upstream, for one answer or a batch of them:
//! relay (prepare the reply), learn the grants of every answer at once,
//! then answer each query and report how it ended.
//!
//! A batch is learned with one store lock and one kernel write; a reply
//! exists only once its grants are in the kernel map (the client's first
//! packet to an address must never race its grant).

use std::time::Instant;

use hickory_proto::op::ResponseCode;
use neuwerk_core::grants::{Grant, GrantError};
use neuwerk_core::special;
use neuwerk_core::time::monotonic_ns;
use smallvec::{smallvec, SmallVec};

use super::observe::{Facts, Filtered, Outcome};
use super::{Ask, Forward, GrantTo, Handler};
use crate::answer::{self, Learned};
use crate::batch::BATCH;
use crate::listen::Query;
use crate::message;
use crate::upstream::{Answer, ResolveError};

/// A forwarded query and what its upstreams gave, on its way to a reply.
pub(crate) struct Finish {
    pub(crate) fwd: Box<Forward>,
    resolved: Option<Result<Answer, ResolveError>>,
    step: Option<Step>,
    /// Set by [`Handler::finish_all`].
    pub(crate) reply: Option<Vec<u8>>,
}

impl Finish {
    /// `fwd` with the outcome of its upstream exchange.
    pub(crate) fn new(fwd: Box<Forward>, resolved: Result<Answer, ResolveError>) -> Finish {
        Finish {
            fwd,
            resolved: Some(resolved),
            step: None,
            reply: None,
        }
    }
}

/// Where a query stands after its answer is relayed.
enum Step {
    /// Ended without learning: how, and the reply.
    Done(Outcome, Vec<u8>),
    /// The reply, once its grants are learned.
    Learn(ToLearn),
}

/// An answer relayed, waiting for its grants to be learned.
struct ToLearn {
    grants: Vec<Grant>,
    learned: Learned,
    reply: Vec<u8>,
    truncated: bool,
    rcode: ResponseCode,
    /// When the answer was read (for the grant-commit time).
    received: Instant,
}

impl Handler {
    /// The query path after the upstream for one query: learn, prepare
    /// the reply, report. Returns the reply.
    pub(crate) fn finish(
        &self,
        fwd: Box<Forward>,
        resolved: Result<Answer, ResolveError>,
    ) -> Option<Vec<u8>> {
        let mut one = [Finish::new(fwd, resolved)];
        self.finish_all(&mut one);
        one[0].reply.take()
    }

    /// [`Handler::finish`] for a batch, learning every answer's grants at
    /// once; each item gets its reply.
    pub(crate) fn finish_all(&self, items: &mut [Finish]) {
        // One clock read for the batch, not several per query: deadlines
        // count from it (after every answer of the batch arrived, so never
        // past what the TTL allows) and so does learning.
        let started = Instant::now();
        let now = monotonic_ns();
        for it in items.iter_mut() {
            let fwd = &mut *it.fwd;
            let Some(resolved) = it.resolved.take() else {
                continue;
            };
            let back = resolved.as_ref().map_or(started, |a| a.received);
            fwd.facts.upstream = Some(back.saturating_duration_since(fwd.asked));
            it.step = Some(self.relay(&fwd.ask, &fwd.query, resolved, now, &mut fwd.facts));
        }
        let batches: SmallVec<[&[Grant]; BATCH]> = items
            .iter()
            .filter_map(|it| match &it.step {
                Some(Step::Learn(t)) => Some(&t.grants[..]),
                _ => None,
            })
            .collect();
        let learned: SmallVec<[Result<(), GrantError>; 1]> = match batches.len() {
            0 => SmallVec::new(),
            // `learn` allocates nothing for its bookkeeping; most batches
            // at a moderate rate hold one answer.
            1 => smallvec![self.grants.learn(batches[0], now)],
            _ => self.grants.learn_many(&batches, now).into(),
        };
        drop(batches);
        let mut learned = learned.into_iter();
        // The grants are in the map: the commit and the query end here.
        let committed = Instant::now();
        for it in items.iter_mut() {
            let Some(step) = it.step.take() else { continue };
            let fwd = &mut *it.fwd;
            let (outcome, reply) = match step {
                Step::Done(outcome, reply) => (outcome, reply),
                Step::Learn(t) => {
                    let result = learned.next().unwrap_or(Ok(()));
                    if result.is_ok() {
                        let took = committed.saturating_duration_since(t.received);
                        fwd.facts.grant_commit = Some(took);
                    }
                    answered(&fwd.ask, &fwd.query, t, result, &mut fwd.facts)
                }
            };
            let took = committed.saturating_duration_since(fwd.query.received);
            self.report_took(&fwd.query, &fwd.facts, &outcome, took);
            it.reply = Some(reply);
        }
    }

    /// Checks the answer and prepares the reply, and the grants it teaches
    /// (their deadlines counted from `now_ns`).
    fn relay(
        &self,
        ask: &Ask,
        query: &Query,
        resolved: Result<Answer, ResolveError>,
        now_ns: u64,
        facts: &mut Facts,
    ) -> Step {
        let (parsed, b) = (&ask.parsed, &query.bytes[..]);
        let answer = match resolved {
            Ok(answer) => answer,
            Err(error) => {
                let rcode = error.rcode();
                let reply = message::error_reply(b, parsed, rcode);
                return Step::Done(Outcome::UpstreamFailed { rcode, error }, reply);
            }
        };
        let rcode = answer.rcode;
        let qname = ask.request.question.name();
        // NXDOMAIN, or NOERROR without addresses: relayed, nothing learned.
        // Nor for an audited name: its network's traffic passes anyway.
        let mut learned = match &ask.grant_to {
            Some(_) if rcode == ResponseCode::NoError => {
                answer::chain_addresses(&answer.bytes, qname)
            }
            _ => Learned::default(),
        };
        let mut bytes = answer.bytes;
        if let Some(to) = &ask.grant_to {
            facts.filtered = self.special_use(&mut learned, to);
            facts.filtered_kept = to.audit;
        }
        if !facts.filtered.is_empty() && !facts.filtered_kept {
            let drop: SmallVec<[_; 4]> = facts.filtered.iter().map(|&(a, _)| a).collect();
            match answer::strip(&bytes, qname, &drop) {
                Ok(stripped) => bytes = stripped,
                Err(e) => {
                    let reply = message::error_reply(b, parsed, ResponseCode::ServFail);
                    return Step::Done(Outcome::RelayFailed(e), reply);
                }
            }
        }
        // Prepared before learning, so that nothing is learned for an
        // answer that cannot be sent.
        let (reply, relayed) = match answer::relay(bytes, &ask.client, self.max_ttl) {
            Ok(prepared) => prepared,
            Err(e) => {
                let reply = message::error_reply(b, parsed, ResponseCode::ServFail);
                return Step::Done(Outcome::RelayFailed(e), reply);
            }
        };
        let grants = match (&ask.grant_to, learned.is_empty()) {
            (Some(GrantTo { network, ports, .. }), false) => {
                let hostname = facts.name.clone();
                learned
                    .addrs
                    .iter()
                    .zip(&learned.ttls)
                    .map(|(&addr, &ttl)| Grant {
                        network: network.clone(),
                        addr,
                        hostname: hostname.clone(),
                        ports: ports.clone(),
                        expires_ns: now_ns.saturating_add(self.lifetime_ns(ttl)),
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        if grants.is_empty() {
            let outcome = Outcome::Answered {
                rcode,
                truncated: relayed.truncated,
            };
            return Step::Done(outcome, reply);
        }
        Step::Learn(ToLearn {
            grants,
            learned,
            reply,
            truncated: relayed.truncated,
            rcode,
            received: answer.received,
        })
    }

    /// Takes the special-use addresses out of `learned` (for the network
    /// `to` names) and returns them with their class.
    fn special_use(&self, learned: &mut Learned, to: &GrantTo) -> Filtered {
        let mut filtered = Filtered::new();
        learned.retain(
            |addr| match special::classify(addr, &self.node, &to.learning) {
                None => true,
                Some(class) => {
                    filtered.push((addr, class));
                    false
                }
            },
        );
        filtered
    }
}

/// How a query whose grants were to be learned ended, given whether they
/// were.
fn answered(
    ask: &Ask,
    query: &Query,
    t: ToLearn,
    result: Result<(), GrantError>,
    facts: &mut Facts,
) -> (Outcome, Vec<u8>) {
    if let Err(e) = result {
        let reply = message::error_reply(&query.bytes, &ask.parsed, ResponseCode::ServFail);
        return (Outcome::LearnFailed(e), reply);
    }
    facts.learned = t.learned;
    let outcome = Outcome::Answered {
        rcode: t.rcode,
        truncated: t.truncated,
    };
    (outcome, t.reply)
}
