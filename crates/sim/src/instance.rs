//! An instance's queue proxy: at most containerConcurrency requests processed at once, the rest
//! waiting in arrival order; the function's processing takes the request's own work time.

use rand::RngExt;

use crate::events::{Event, ms};
use crate::world::{Phase, World};

impl World {
    /// A forwarded request reaches its instance.
    pub(crate) fn at_instance(&mut self, req: u32) {
        let r = &self.requests[req as usize];
        let instance = r.instance;
        let at = self.events.instant(self.events.now());
        let cc = self.revisions[r.rev as usize].cc;
        let inst = &mut self.instances[instance as usize];
        inst.stats.request_in(at, false);
        if cc == 0 || inst.busy < cc {
            inst.busy += 1;
            self.start_processing(req);
        } else {
            inst.queue.push_back(req);
        }
    }

    /// The function answered: the response heads back, the next waiting request starts.
    pub(crate) fn processed(&mut self, req: u32) {
        let (instance, origin) = {
            let r = &self.requests[req as usize];
            (r.instance, r.origin)
        };
        let at = self.events.instant(self.events.now());
        let inst = &mut self.instances[instance as usize];
        inst.stats.request_out(at, false);
        inst.busy -= 1;
        // What the queue proxy's load header says: in flight and waiting, this one included.
        let load = inst.busy + inst.queue.len() as u32 + 1;
        let node = inst.node;
        if let Some(next) = inst.queue.pop_front() {
            inst.busy += 1;
            self.start_processing(next);
        }
        self.requests[req as usize].reported_load = load;
        let back = self.hop(node, origin);
        self.events.after(back, Event::AtGateway { req });
        self.gone_if_idle(instance);
    }

    /// The function starts on a request: done after its work and the timer's lateness, which
    /// the queue proxy reports as its processing time.
    fn start_processing(&mut self, req: u32) {
        let late =
            if self.model.timer_ms > 0.0 { self.rng.random_range(0.0..self.model.timer_ms) } else { 0.0 };
        let r = &mut self.requests[req as usize];
        r.work_ms += late;
        let work = ms(r.work_ms);
        self.events.after(work, Event::Processed { req });
    }

    /// A draining instance that has nothing left goes, and its node's room with it.
    pub(crate) fn gone_if_idle(&mut self, instance: u32) {
        let inst = &mut self.instances[instance as usize];
        if inst.phase == Phase::Draining && inst.busy == 0 && inst.queue.is_empty() {
            inst.phase = Phase::Gone;
        }
    }
}
