//! The simulated fleet's state, and the gateway's part of a request's life: admit (pick or
//! queue), forward, feed back, and let go. Every decision is the policy crate's
//! (`policy::gateway::pick` / `feed_back`, the revision's balancer and queue discipline, the
//! fleet's `RequestStats`); this module only keeps the books the real gateway keeps.

use std::collections::VecDeque;

use ikukantai_policy::balance::{Balancer, PickContext};
use ikukantai_policy::estimate::{MEASURED_SAMPLES, PeerFilter, RttMatrix};
use ikukantai_policy::gateway::{self, InstanceLoad, PickScratch, Response, Shortlist};
use ikukantai_policy::queue::{HeaderLookup, QueueDiscipline, RequestMeta};
use ikukantai_policy::registry::{self, PolicyParams};
use ikukantai_policy::scaler::RevisionScaler;
use ikukantai_policy::stats::RequestStats;
use rand::rngs::SmallRng;

use crate::events::{Event, Events, Time, ms};
use crate::model::{Links, Model};

/// How often a gateway's waiting requests re-check for capacity (the gateway's `RECHECK`).
const RECHECK_MS: f64 = 50.0;

/// Phase of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Starting,
    Ready,
    /// Out of the routes, serving what it has until its grace ends.
    Stopping,
    /// Grace over: gone once idle.
    Draining,
    Gone,
}

/// An instance and its queue proxy.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) rev: u32,
    pub(crate) node: u32,
    pub(crate) phase: Phase,
    /// Requests being processed.
    pub(crate) busy: u32,
    /// Requests waiting at the queue proxy for a slot.
    pub(crate) queue: VecDeque<u32>,
    pub(crate) stats: RequestStats,
}

/// A revision: its scaler, its settings, and where its instances should be.
#[derive(Debug)]
pub(crate) struct Revision {
    pub(crate) scaler: RevisionScaler,
    pub(crate) cc: u32,
    pub(crate) target: f64,
    pub(crate) balancer: String,
    pub(crate) queue: String,
    /// Ready instances, in id (creation) order: what the gateways route to.
    pub(crate) routed: Vec<u32>,
    /// Bumped whenever `routed` changes; gateways catch up lazily.
    pub(crate) version: u64,
}

/// Where a request is in the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtGateway {
    Waiting,
    Forwarded,
    Finished,
}

/// One request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) origin: u32,
    pub(crate) rev: u32,
    pub(crate) arrival: Time,
    pub(crate) work_ms: f64,
    pub(crate) sent: Time,
    pub(crate) instance: u32,
    /// Where the instance was in its gateway's routed list when picked.
    pub(crate) slot: u32,
    /// Level it belongs to, and whether it is measured.
    pub(crate) level: u32,
    pub(crate) measured: bool,
    pub(crate) gateway: AtGateway,
    /// At an instance (queued or processing) or on a link to or from one.
    pub(crate) in_transit: bool,
    /// The client has its answer or gave up.
    pub(crate) client_done: bool,
    /// Its client-timeout event has fired (until then an event refers to it).
    pub(crate) deadline_passed: bool,
    /// What the response carries back: the instance's load when it answered.
    pub(crate) reported_load: u32,
}

/// One revision as one gateway sees it.
pub(crate) struct GatewayRevision {
    version: u64,
    instances: Vec<InstanceLoad>,
    shortlist: Shortlist,
    balancer: Box<dyn Balancer>,
    pub(crate) waiting: Box<dyn QueueDiscipline<u32>>,
    pub(crate) activator: RequestStats,
    pub(crate) origin: RequestStats,
    recheck: bool,
}

impl GatewayRevision {
    /// Where `instance` is among the routed ones (kept in id order): at `hint`, where the pick
    /// found it, unless the routes changed since.
    fn position(&self, instance: u32, hint: u32) -> Option<usize> {
        let hint = hint as usize;
        let id = u64::from(instance);
        if self.instances.get(hint).is_some_and(|x| x.id == id) {
            return Some(hint);
        }
        self.instances.binary_search_by_key(&id, |x| x.id).ok()
    }
}

impl std::fmt::Debug for GatewayRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayRevision").field("instances", &self.instances.len()).finish()
    }
}

struct NoHeaders;

impl HeaderLookup for NoHeaders {
    fn header(&self, _: &str) -> Option<&str> {
        None
    }
}

/// A sample of what a client saw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) origin: u32,
    pub(crate) rev: u32,
    pub(crate) arrival: Time,
    pub(crate) latency_ms: Option<f64>,
    pub(crate) served: Option<u32>,
}

/// The whole simulated fleet.
pub(crate) struct World {
    pub(crate) events: Events,
    pub(crate) model: Model,
    pub(crate) links: Links,
    pub(crate) rng: SmallRng,
    pub(crate) n: usize,
    pub(crate) capacity: Vec<u32>,
    pub(crate) rtt: RttMatrix,
    /// What every gateway's picks build and throw away.
    scratch: PickScratch,
    pub(crate) revisions: Vec<Revision>,
    pub(crate) instances: Vec<Instance>,
    pub(crate) gateways: Vec<Option<Box<GatewayRevision>>>,
    pub(crate) requests: Vec<Request>,
    free: Vec<u32>,
    /// Requests whose client has no answer yet, per level.
    pub(crate) outstanding: Vec<usize>,
    pub(crate) seen: Vec<Seen>,
    /// Measured requests the generators sent in the current level (counted as they leave, so
    /// that every one can be checked off against `seen`).
    pub(crate) sent: usize,
    pub(crate) seed: u64,
    pub(crate) client_timeout: Time,
    pub(crate) queue_depth: usize,
    pub(crate) control: crate::control::Control,
    pub(crate) probe_interval: Time,
    /// Each node's recent probes per peer (the gateway's filter).
    pub(crate) probe_filters: Vec<PeerFilter>,
    pub(crate) load: Vec<crate::load::Generator>,
    /// Instances started, ready and stopped, for the report.
    pub(crate) trace: crate::trace::Trace,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("now", &self.events.now()).field("nodes", &self.n).finish()
    }
}

impl World {
    /// A fleet of `n` nodes with the given revisions and nothing running.
    #[expect(clippy::too_many_arguments, reason = "built once, by the driver")]
    pub(crate) fn new(
        model: Model,
        links: Links,
        capacity: Vec<u32>,
        rtt: RttMatrix,
        revisions: Vec<Revision>,
        seed: u64,
        client_timeout: Time,
        rng: SmallRng,
    ) -> Self {
        let n = capacity.len();
        let slots = n * revisions.len();
        let mut gateways = Vec::with_capacity(slots);
        gateways.resize_with(slots, || None);
        Self {
            events: Events::new(),
            model,
            links,
            rng,
            n,
            capacity,
            rtt,
            scratch: PickScratch::default(),
            revisions,
            instances: Vec::new(),
            gateways,
            requests: Vec::new(),
            free: Vec::new(),
            outstanding: Vec::new(),
            seen: Vec::new(),
            sent: 0,
            seed,
            client_timeout,
            queue_depth: ikukantai_dataplane::defaults::GATEWAY_QUEUE_DEPTH,
            control: crate::control::Control::default(),
            probe_interval: 0,
            probe_filters: vec![PeerFilter::new(MEASURED_SAMPLES, 64); n],
            load: Vec::new(),
            trace: Default::default(),
        }
    }

    /// A new request, arriving now at `origin`'s gateway.
    pub(crate) fn new_request(
        &mut self,
        origin: u32,
        rev: u32,
        work_ms: f64,
        level: u32,
        measured: bool,
    ) -> u32 {
        let r = Request {
            origin,
            rev,
            arrival: self.events.now(),
            work_ms,
            sent: 0,
            instance: u32::MAX,
            slot: 0,
            level,
            measured,
            gateway: AtGateway::Waiting,
            in_transit: false,
            client_done: false,
            deadline_passed: false,
            reported_load: 0,
        };
        while self.outstanding.len() <= level as usize {
            self.outstanding.push(0);
        }
        self.outstanding[level as usize] += 1;
        match self.free.pop() {
            Some(i) => {
                self.requests[i as usize] = r;
                i
            }
            None => {
                self.requests.push(r);
                (self.requests.len() - 1) as u32
            }
        }
    }

    /// Frees a request once nothing holds it: the gateway, an instance, a pending event.
    fn release(&mut self, req: u32) {
        let r = &self.requests[req as usize];
        if r.gateway == AtGateway::Finished && !r.in_transit && r.client_done && r.deadline_passed {
            self.free.push(req);
        }
    }

    /// [`World::gateway`] with what its picks read besides: the RTT matrix and the scratch.
    fn picking(&mut self, node: u32, rev: u32) -> (&mut GatewayRevision, &RttMatrix, &mut PickScratch) {
        self.gateway(node, rev);
        let slot = self.slot(node, rev);
        let g = self.gateways[slot].as_deref_mut().expect("made just now");
        (g, &self.rtt, &mut self.scratch)
    }

    /// Where the gateway state of `rev` at `node` is kept.
    fn slot(&self, node: u32, rev: u32) -> usize {
        node as usize * self.revisions.len() + rev as usize
    }

    /// The gateway state of `rev` at `node`, caught up with the routes.
    pub(crate) fn gateway(&mut self, node: u32, rev: u32) -> &mut GatewayRevision {
        let slot = self.slot(node, rev);
        let revision = &self.revisions[rev as usize];
        let g = self.gateways[slot].get_or_insert_with(|| {
            let params = PolicyParams { seed: self.seed ^ u64::from(node), ..PolicyParams::default() };
            let now = self.events.instant(self.events.now());
            Box::new(GatewayRevision {
                version: u64::MAX,
                instances: Vec::new(),
                shortlist: Shortlist::new(params.seed),
                balancer: registry::balancer(&revision.balancer, &params).expect("checked when built"),
                waiting: registry::queue(&revision.queue, &params).expect("checked when built"),
                activator: RequestStats::new(now),
                origin: RequestStats::new(now),
                recheck: false,
            })
        });
        if g.version != revision.version {
            // Routed instances keep their state (in flight, estimates), as `set_routes` keeps it;
            // both lists are in id order, so one merge.
            let mut previous = std::mem::take(&mut g.instances).into_iter().peekable();
            g.instances = revision
                .routed
                .iter()
                .map(|&i| {
                    let id = u64::from(i);
                    while previous.next_if(|x| x.id < id).is_some() {}
                    previous
                        .next_if(|x| x.id == id)
                        .unwrap_or_else(|| InstanceLoad::new(id, self.instances[i as usize].node as usize))
                })
                .collect();
            g.shortlist.routes_changed();
            g.version = revision.version;
        }
        g
    }

    /// A request enters its origin's gateway: an instance with room now, else the activator queue.
    pub(crate) fn admit(&mut self, req: u32) {
        let (origin, rev) = (self.requests[req as usize].origin, self.requests[req as usize].rev);
        let now = self.events.instant(self.events.now());
        let (cc, target) = (self.revisions[rev as usize].cc, self.revisions[rev as usize].target);
        let (g, rtt, scratch) = self.picking(origin, rev);
        g.origin.request_in(now, false);
        let queued = g.waiting.len() as u32;
        let picked = pick(g, (rtt, scratch), origin, cc, target, Some(queued), now);
        if let Some(instance) = picked {
            self.forward(req, instance);
            return;
        }
        let depth = self.queue_depth;
        let g = self.gateway(origin, rev);
        if g.waiting.len() >= depth {
            // 503 at once: the client's answer is a failure.
            g.origin.request_out(now, false);
            self.requests[req as usize].gateway = AtGateway::Finished;
            self.answer(req, None);
            self.release(req);
            return;
        }
        let meta = RequestMeta {
            id: u64::from(req),
            source: None,
            host: "fn",
            path: "/",
            method: "GET",
            headers: &NoHeaders,
            arrival: now,
            deadline: None,
        };
        g.waiting.push(&meta, req);
        g.activator.request_in(now, false);
        let empty = g.instances.is_empty();
        let schedule = !std::mem::replace(&mut g.recheck, true);
        if empty {
            self.events.after(0, Event::Poke { origin, rev });
        }
        if schedule {
            self.events.after(ms(RECHECK_MS), Event::Recheck { node: origin, rev });
        }
    }

    /// Hands capacity to waiting requests, in queue order.
    pub(crate) fn dispatch(&mut self, node: u32, rev: u32) {
        let now = self.events.instant(self.events.now());
        let (cc, target) = (self.revisions[rev as usize].cc, self.revisions[rev as usize].target);
        let mut go = Vec::new();
        {
            let (g, rtt, scratch) = self.picking(node, rev);
            while !g.waiting.is_empty() {
                let Some(instance) = pick(g, (rtt, &mut *scratch), node, cc, target, None, now) else {
                    break;
                };
                let req = g.waiting.pop().expect("not empty");
                // The activator counts a request while it waits; once forwarded, its instance
                // counts it (so the time on the link counts nowhere).
                g.activator.request_out(now, false);
                go.push((req, instance));
            }
        }
        for (req, instance) in go {
            self.forward(req, instance);
        }
    }

    /// The re-check of a gateway's waiting requests: dispatch, and again later while any wait.
    pub(crate) fn recheck(&mut self, node: u32, rev: u32) {
        self.dispatch(node, rev);
        let g = self.gateway(node, rev);
        g.recheck = !g.waiting.is_empty();
        if g.recheck {
            self.events.after(ms(RECHECK_MS), Event::Recheck { node, rev });
        }
    }

    /// Sends a request to an instance across the link between their nodes.
    fn forward(&mut self, req: u32, (instance, slot): (u32, u32)) {
        let now = self.events.now();
        let to = self.instances[instance as usize].node;
        let r = &mut self.requests[req as usize];
        r.sent = now;
        r.instance = instance;
        r.slot = slot;
        r.gateway = AtGateway::Forwarded;
        r.in_transit = true;
        let from = r.origin;
        let delay = self.hop(from, to);
        self.events.after(delay, Event::AtInstance { req });
    }

    /// One hop from a gateway to an instance or back: the link and the proxies' cost.
    pub(crate) fn hop(&mut self, from: u32, to: u32) -> Time {
        let link = self.links.one_way(from as usize, to as usize, &mut self.rng);
        let remote = if from == to { 0.0 } else { self.model.remote_hop_ms };
        ms(link + self.model.hop_ms + remote)
    }

    /// A response is back at the gateway: feedback, the slot freed, the client answered.
    pub(crate) fn at_gateway(&mut self, req: u32) {
        let r = self.requests[req as usize].clone();
        self.requests[req as usize].in_transit = false;
        if r.gateway == AtGateway::Forwarded {
            let now = self.events.now();
            let at = self.events.instant(now);
            let serving = self.instances[r.instance as usize].node as usize;
            let rtt_ms = self.rtt.get(r.origin as usize, serving, at);
            let g = self.gateway(r.origin, r.rev);
            let response = Response {
                latency: std::time::Duration::from_nanos(now - r.sent),
                service_ms: Some(r.work_ms),
                from_queue_proxy: true,
                reported_in_flight: Some(r.reported_load),
                success: true,
                rtt_ms: Some(rtt_ms),
            };
            let id = u64::from(r.instance);
            let node = g.position(r.instance, r.slot);
            let load = node.map(|i| &mut g.instances[i]);
            gateway::feed_back(g.balancer.as_mut(), load, (id, serving, r.origin as usize), &response, at);
            self.let_go(req);
            let latency = (now - r.arrival) as f64 / 1e6 + self.model.client_ms;
            let served = self.instances[r.instance as usize].node;
            self.answer(req, Some((latency, served)));
        }
        self.release(req);
    }

    /// The gateway lets go of a forwarded request (answered or abandoned): its slot goes to
    /// whoever waits.
    fn let_go(&mut self, req: u32) {
        let r = self.requests[req as usize].clone();
        let at = self.events.instant(self.events.now());
        let g = self.gateway(r.origin, r.rev);
        if let Some(i) = g.position(r.instance, r.slot) {
            let load = &mut g.instances[i];
            load.in_flight = load.in_flight.saturating_sub(1);
        }
        g.origin.request_out(at, false);
        self.requests[req as usize].gateway = AtGateway::Finished;
        self.dispatch(r.origin, r.rev);
    }

    /// The client gives up: a waiting request leaves the queue, a forwarded one lets go of its
    /// slot (its instance still works on it).
    pub(crate) fn client_timeout(&mut self, req: u32) {
        self.requests[req as usize].deadline_passed = true;
        let r = self.requests[req as usize].clone();
        if r.client_done {
            self.release(req);
            return;
        }
        match r.gateway {
            AtGateway::Waiting => {
                let at = self.events.instant(self.events.now());
                let g = self.gateway(r.origin, r.rev);
                g.waiting.remove(u64::from(req));
                g.origin.request_out(at, false);
                g.activator.request_out(at, false);
                self.requests[req as usize].gateway = AtGateway::Finished;
            }
            AtGateway::Forwarded => self.let_go(req),
            AtGateway::Finished => {}
        }
        self.answer(req, None);
        self.release(req);
    }

    /// The client's view: answered within its timeout (latency, serving node) or not.
    fn answer(&mut self, req: u32, outcome: Option<(f64, u32)>) {
        let r = &mut self.requests[req as usize];
        if r.client_done {
            return;
        }
        r.client_done = true;
        let outcome = outcome.filter(|(latency, _)| ms(*latency) <= self.client_timeout);
        self.outstanding[r.level as usize] -= 1;
        if !r.measured {
            return;
        }
        self.seen.push(Seen {
            origin: r.origin,
            rev: r.rev,
            arrival: r.arrival,
            latency_ms: outcome.map(|o| o.0),
            served: outcome.map(|o| o.1),
        });
    }

    /// The client's deadline for a request.
    pub(crate) fn schedule_timeout(&mut self, req: u32) {
        let at = self.requests[req as usize].arrival + self.client_timeout;
        self.events.deadline(at, Event::ClientTimeout { req });
    }
}

fn pick(
    g: &mut GatewayRevision,
    (rtt, scratch): (&RttMatrix, &mut PickScratch),
    origin: u32,
    cc: u32,
    target: f64,
    queued: Option<u32>,
    now: std::time::Instant,
) -> Option<(u32, u32)> {
    // `queued`: a new request and the requests ahead of it; `None` for the head of the queue.
    let ctx = PickContext {
        origin: origin as usize,
        rtt,
        now,
        target_concurrency: target,
        queued: queued.unwrap_or(0),
        fresh: queued.is_some(),
    };
    let i = gateway::pick(g.balancer.as_mut(), &ctx, cc, &mut g.instances, &mut g.shortlist, scratch)?;
    Some((g.instances[i].id as u32, i as u32))
}
