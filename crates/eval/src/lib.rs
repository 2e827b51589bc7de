//! ikukantai's evaluation harness: `ikukantai bench SCENARIO.yaml --out DIR`.
//!
//! For each policy set (`knative` = even + spread, `ikukantai` = faast + yukari, `ours` = the
//! defaults) it starts a fresh local fleet from the scenario's topology, deploys the function (or
//! functions), and drives it with open-loop Poisson load entering at the scenario's origin nodes,
//! level by level, at a rate that may change over each level (phases: steps and ramps). It writes
//! `report.json`, `report.md` and plots; the instances' starts, readiness and stops go with them
//! (`trace`).

pub mod plot;
pub mod report;
pub mod run;
pub mod scenario;
pub mod trace;
