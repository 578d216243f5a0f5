//! Runs a checked plan: prints it, then every point in order as a normal
//! run (its own folder under `points/`), with the server started, reset and
//! profiled as the alias says; climbs grid axes until saturation, searches
//! for capacity, and rewrites `experiment.json` after every point. A point
//! already finished in the folder being resumed is taken as it is.
//!
//! One file (~700 lines): the runner is one struct whose methods share its
//! state (the servers, the resumed points, the stop flag, `experiment.json`);
//! what does not need that state already lives beside it (the plan's words in
//! `describe`, points in `point`, verdicts in `saturation` and `search`).

use super::describe;
use super::file::{Lifecycle, ModelAlias, OnFailure};
use super::plan::{self, CasePlan, Experiment, Settings};
use super::point::Point;
use super::results::{self, Group, PointResult, Status};
use super::saturation::{self, Saturated};
use super::search::{self, Probe, Search};
use super::server::Servers;
use super::state::{Analysis, CaseSearch, CaseState, ExperimentState, Progress, EXPERIMENT_SCHEMA};
use crate::cli::ExperimentArgs;
use crate::run::RunOutcome;
use anyhow::{bail, Context};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `tracebench experiment`: returns the exit code (0 done, 1 a point failed, 130 stopped).
pub async fn run_experiment(args: ExperimentArgs, command_line: String) -> anyhow::Result<i32> {
    run_plan(args, command_line, None, None).await
}

/// Runs the experiment of `args.file`, or the one `text` holds (a plan
/// built in code; `args.file` then only names it), and with `analysis`
/// adds a study's section before the report and the history are written.
pub async fn run_plan(
    args: ExperimentArgs,
    command_line: String,
    text: Option<String>,
    analysis: Option<&(dyn Analysis + Sync)>,
) -> anyhow::Result<i32> {
    let (dir, previous) = match &args.resume {
        Some(dir) => (dir.clone(), Some(ExperimentState::read(dir)?)),
        None => (PathBuf::new(), None),
    };
    let settings = Settings {
        points_dir: dir.join("points"),
        db: args.history.path().map(Path::to_path_buf),
        tui: !args.no_tui,
        run_prefix: String::new(),
    };
    let experiment = match text {
        Some(text) => plan::load_text(&args.file, text, &settings)?,
        None => plan::load(&args.file, &settings)?,
    };
    print!("{}", describe::describe(&experiment));
    if args.dry_run {
        print!("{}", describe::dry_run(&experiment, &settings)?);
        return Ok(0);
    }
    let (dir, state) = match previous {
        Some(previous) => {
            if previous.file_hash != experiment.hash {
                bail!(
                    "{} was made from a different experiment file (hash {} there, {} here): resume it with the file it was started with",
                    dir.display(),
                    previous.file_hash,
                    experiment.hash
                );
            }
            if previous.resolved_file != experiment.text {
                eprintln!("note: the file's variables resolve differently than when the experiment started; the points left run with today's values");
            }
            eprintln!(
                "resuming {}: {} points already done",
                dir.display(),
                previous.finished().count()
            );
            (dir, previous)
        }
        None => {
            let id = format!("{}-{}", experiment.name, crate::run::new_run_id());
            let dir = args.out.join(&id);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            (dir, fresh_state(&experiment, &id, &args.file, command_line))
        }
    };
    let settings = Settings {
        points_dir: dir.join("points"),
        run_prefix: format!("{}-", state.experiment_id),
        ..settings
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(flag_on_ctrl_c(interrupted.clone()));
    let servers = Servers::new(&dir.join("servers")).await?;
    let mut runner = Runner::new(&experiment, settings, &dir, state, interrupted, servers);
    let outcome = runner.run_all().await;
    runner.servers.stop().await;
    watcher.abort();
    outcome?;
    runner.finish(&args, analysis).await
}

/// Sets `flag` on Ctrl-C (a run in progress sees the signal too and stops itself).
async fn flag_on_ctrl_c(flag: Arc<AtomicBool>) {
    if tokio::signal::ctrl_c().await.is_ok() {
        flag.store(true, Ordering::SeqCst);
        eprintln!("experiment: stopping after the current point (Ctrl-C)");
    }
}

fn fresh_state(
    experiment: &Experiment,
    id: &str,
    file: &Path,
    command_line: String,
) -> ExperimentState {
    ExperimentState {
        schema: EXPERIMENT_SCHEMA.to_string(),
        experiment_id: id.to_string(),
        name: experiment.name.clone(),
        file: file.display().to_string(),
        file_hash: experiment.hash.clone(),
        resolved_file: experiment.text.clone(),
        command_line,
        started_unix_ns: crate::units::unix_now_ns(),
        ended_unix_ns: None,
        progress: Progress::Running,
        cases: experiment.cases.iter().map(case_state).collect(),
        points: Vec::new(),
        groups: Vec::new(),
        reading: Vec::new(),
        study: None,
    }
}

fn case_state(case: &CasePlan) -> CaseState {
    CaseState {
        index: case.index,
        name: case.name.clone(),
        model: case.alias.clone(),
        axes: case.axes.clone(),
        combinations: case.combos.len(),
        repeats: case.repeats,
        kind: if case.search.is_some() {
            "search"
        } else {
            "grid"
        }
        .to_string(),
        saturation: Vec::new(),
        searches: Vec::new(),
    }
}

struct Runner<'a> {
    experiment: &'a Experiment,
    settings: Settings,
    dir: PathBuf,
    state: ExperimentState,
    /// Points of the folder being resumed, by id.
    done: HashMap<String, PointResult>,
    servers: Servers,
    /// Launch commands that would not start, and why.
    failed_launches: HashMap<String, String>,
    interrupted: Arc<AtomicBool>,
    stop: bool,
}

impl<'a> Runner<'a> {
    fn new(
        experiment: &'a Experiment,
        settings: Settings,
        dir: &Path,
        previous: ExperimentState,
        interrupted: Arc<AtomicBool>,
        servers: Servers,
    ) -> Self {
        let done = previous
            .finished()
            .map(|p| (p.spec.id.clone(), p.clone()))
            .collect();
        let mut state = previous;
        state.points.clear();
        state.groups.clear();
        state.cases = experiment.cases.iter().map(case_state).collect();
        state.progress = Progress::Running;
        Self {
            experiment,
            settings,
            dir: dir.to_path_buf(),
            state,
            done,
            servers,
            failed_launches: HashMap::new(),
            interrupted,
            stop: false,
        }
    }

    fn stopped(&self) -> bool {
        self.stop || self.interrupted.load(Ordering::SeqCst)
    }

    async fn run_all(&mut self) -> anyhow::Result<()> {
        for case in &self.experiment.cases {
            match &case.search {
                Some(_) => self.run_search_case(case).await?,
                None => self.run_grid_case(case).await?,
            }
            if self.stopped() {
                break;
            }
        }
        Ok(())
    }

    async fn run_grid_case(&mut self, case: &CasePlan) -> anyhow::Result<()> {
        let mut previous: Option<(BTreeMap<String, Value>, Group)> = None;
        let mut saturated: Vec<BTreeMap<String, Value>> = Vec::new();
        for combo in &case.combos {
            let outer = outer_axes(case, combo);
            if saturated.contains(&outer) {
                self.note_skipped(case, &outer, combo);
                continue;
            }
            let mut points = Vec::new();
            for repeat in 0..case.repeats {
                let point = self.point(case, combo, None, repeat, 0)?;
                points.push(self.run_point(case, point).await?);
                if self.stopped() {
                    return Ok(());
                }
            }
            let group = self.group(case, &points);
            if let Some((axis, rule)) = &case.saturation {
                let before = previous
                    .as_ref()
                    .filter(|(o, _)| *o == outer)
                    .map(|(_, g)| g);
                let queue = queue_trend(&points);
                if let Some((name, detail)) = saturation::check(rule, before, &group, queue) {
                    let at = group.axes.get(axis).cloned().unwrap_or(Value::Null);
                    self.state.cases[case.index].saturation.push(Saturated {
                        outer: outer.clone(),
                        axis: axis.clone(),
                        at,
                        rule: name.to_string(),
                        detail,
                        skipped: Vec::new(),
                    });
                    saturated.push(outer.clone());
                }
            }
            self.state.groups.push(group.clone());
            self.state.write(&self.dir)?;
            previous = Some((outer, group));
        }
        Ok(())
    }

    /// Adds a value a saturation stop left out to that line's verdict.
    fn note_skipped(
        &mut self,
        case: &CasePlan,
        outer: &BTreeMap<String, Value>,
        combo: &plan::Combo,
    ) {
        let Some((axis, _)) = &case.saturation else {
            return;
        };
        let value = combo
            .iter()
            .find(|(k, _)| &k.value == axis)
            .map(|(_, v)| v.value.clone());
        let verdicts = &mut self.state.cases[case.index].saturation;
        if let (Some(verdict), Some(value)) =
            (verdicts.iter_mut().find(|s| &s.outer == outer), value)
        {
            verdict.skipped.push(value);
        }
    }

    async fn run_search_case(&mut self, case: &CasePlan) -> anyhow::Result<()> {
        let plan = case.search.as_ref().expect("a search case");
        for combo in &case.combos {
            let mut search = Search::new(plan);
            while let Some(value) = search.next() {
                let Some(probe) = self.probe(case, combo, value).await? else {
                    return Ok(());
                };
                search.record(probe);
            }
            let axes = combo
                .iter()
                .map(|(k, v)| (k.value.clone(), v.value.clone()))
                .collect();
            self.state.cases[case.index].searches.push(CaseSearch {
                axes,
                slo: plan.slo.iter().map(|c| c.text.clone()).collect(),
                trace: search.finish(),
            });
            self.state.write(&self.dir)?;
        }
        Ok(())
    }

    /// Runs trials of one value until their verdict is decided; `None` when stopped.
    async fn probe(
        &mut self,
        case: &CasePlan,
        combo: &plan::Combo,
        value: f64,
    ) -> anyhow::Result<Option<Probe>> {
        let plan = case.search.as_ref().expect("a search case");
        let mut trials = Vec::new();
        let mut ids = Vec::new();
        loop {
            let trial = trials.len() as u32;
            let mut points = Vec::new();
            for repeat in 0..case.repeats {
                let point = self.point(case, combo, Some(value), repeat, trial)?;
                points.push(self.run_point(case, point).await?);
                if self.stopped() {
                    return Ok(None);
                }
            }
            ids.extend(points.iter().map(|p| p.spec.id.clone()));
            let group = self.group(case, &points);
            let judged = self.judge(case, &points);
            let pass =
                judged.iter().all(|j| j.pass) && points.iter().all(|p| p.status == Status::Ok);
            let margin = judged
                .iter()
                .map(|j| j.margin)
                .fold(f64::INFINITY, f64::min);
            let margin = if margin.is_finite() { margin } else { -1.0 };
            trials.push((pass, margin));
            if let Some(last) = self.state.points.last_mut() {
                last.slo = Some(judged);
            }
            self.state.groups.push(group);
            self.state.write(&self.dir)?;
            if let Some((pass, margin)) = search::decided(&trials, plan.confirm_margin) {
                return Ok(Some(Probe {
                    value,
                    pass,
                    margin,
                    points: ids,
                }));
            }
        }
    }

    /// The search's constraints judged on a trial (its repeats' requests pooled).
    fn judge(&self, case: &CasePlan, points: &[PointResult]) -> Vec<super::slo::Judged> {
        let plan = case.search.as_ref().expect("a search case");
        let refs: Vec<&PointResult> = points.iter().collect();
        let slo = &self.point_slo(case);
        match results::pooled_summary(&self.dir, &refs, slo) {
            Some(summary) => plan.slo.iter().map(|c| c.judge(&summary)).collect(),
            None => plan
                .slo
                .iter()
                .map(|c| c.judge(&Default::default()))
                .collect(),
        }
    }

    /// The run SLOs (for goodput) a case's points use.
    fn point_slo(&self, case: &CasePlan) -> crate::analysis::Slo {
        let alias = &self.experiment.models[&case.alias];
        let value = case.search.as_ref().map(|s| s.start);
        case.point(
            &self.experiment.path,
            alias,
            &self.settings,
            &case.combos[0],
            value,
            0,
            0,
        )
        .map(|p| p.config.slo)
        .unwrap_or_default()
    }

    fn point(
        &self,
        case: &CasePlan,
        combo: &plan::Combo,
        value: Option<f64>,
        repeat: u32,
        trial: u32,
    ) -> anyhow::Result<Point> {
        let alias = &self.experiment.models[&case.alias];
        case.point(
            &self.experiment.path,
            alias,
            &self.settings,
            combo,
            value,
            repeat,
            trial,
        )
    }

    /// A point's repeats together (requests pooled for the percentiles).
    fn group(&self, case: &CasePlan, points: &[PointResult]) -> Group {
        let refs: Vec<&PointResult> = points.iter().collect();
        let pooled = (points.len() > 1)
            .then(|| results::pooled_summary(&self.dir, &refs, &self.point_slo(case)))
            .flatten();
        results::group(&refs, pooled.as_ref())
    }

    /// Runs one point (or takes it from the folder being resumed), records it.
    async fn run_point(&mut self, case: &CasePlan, point: Point) -> anyhow::Result<PointResult> {
        if let Some(done) = self.done.get(&point.spec.id) {
            self.state.points.push(done.clone());
            return Ok(done.clone());
        }
        let total = self.state.points.len() + 1;
        eprintln!(
            "\n=== point {total}: {} ({})",
            point.spec.label, point.spec.id
        );
        let alias = &self.experiment.models[&case.alias];
        let mut result = new_result(&point);
        if let Err(reason) = self.prepare_server(alias, &point, &mut result).await {
            result.status = Status::Failed;
            result.reason = Some(reason);
        } else {
            self.measure(case, alias, &point, &mut result).await;
        }
        result.ended_unix_ns = crate::units::unix_now_ns();
        match (result.status, &result.reason) {
            (Status::Failed, Some(reason)) => {
                eprintln!("point {} failed: {reason}", point.spec.id);
                if self.experiment.on_failure == OnFailure::Stop {
                    self.stop = true;
                }
            }
            (Status::Interrupted, _) => self.stop = true,
            _ => {}
        }
        self.state.points.push(result.clone());
        self.state.write(&self.dir)?;
        Ok(result)
    }

    /// Starts (or keeps) the point's server and makes the reset calls.
    async fn prepare_server(
        &mut self,
        alias: &ModelAlias,
        point: &Point,
        result: &mut PointResult,
    ) -> Result<(), String> {
        let (Some(lifecycle), Some(launch)) = (&alias.server, &point.launch) else {
            return Ok(());
        };
        if let Some(reason) = self.failed_launches.get(launch) {
            return Err(format!(
                "the server did not start for an earlier point: {reason}"
            ));
        }
        let name = self
            .experiment
            .models
            .iter()
            .find(|(_, a)| std::ptr::eq(*a, alias))
            .map(|(n, _)| n.as_str())
            .unwrap_or("server");
        match self
            .servers
            .ensure(
                name,
                lifecycle,
                launch,
                &point.config.url,
                lifecycle.restart_between_points,
            )
            .await
        {
            Ok(cold) => result.cold_start = cold,
            Err(reason) => {
                self.failed_launches.insert(launch.clone(), reason.clone());
                return Err(reason);
            }
        }
        let resets: Vec<String> = lifecycle.reset.iter().map(|r| r.value.clone()).collect();
        let calls = self.servers.calls(&point.config.url, &resets).await;
        for call in calls
            .iter()
            .filter(|c| !c.status.is_some_and(|s| (200..300).contains(&s)))
        {
            eprintln!(
                "note: `{}` before the point answered {:?}: {}",
                call.call, call.status, call.answer
            );
        }
        result.calls.extend(calls);
        Ok(())
    }

    /// The run itself, profiled when asked; fills the result.
    async fn measure(
        &mut self,
        case: &CasePlan,
        alias: &ModelAlias,
        point: &Point,
        result: &mut PointResult,
    ) {
        let url = point.config.url.clone();
        if case.profile {
            result
                .calls
                .push(self.servers.call(&url, "POST /start_profile").await);
        }
        let command_line = format!(
            "tracebench run {}",
            crate::commands::masked_command_line(point.argv.iter().cloned())
        );
        let mut config = point.config.clone();
        config.live_context = describe::live_context(self.experiment, &self.state, case, point);
        if let Some(run_id) = &config.run_id {
            set_aside(&config.out.join(run_id));
        }
        let outcome = crate::run::execute(config, command_line).await;
        if case.profile {
            result
                .calls
                .push(self.servers.call(&url, "POST /stop_profile").await);
            result.profile_trace = profile_trace(alias.server.as_ref());
        }
        match outcome {
            Ok(outcome) => self.take_outcome(&outcome, result),
            Err(e) => {
                result.status = Status::Failed;
                result.reason = Some(format!("{e:#}"));
            }
        }
    }

    fn take_outcome(&self, outcome: &RunOutcome, result: &mut PointResult) {
        let summary = &outcome.summary;
        result.run_dir = outcome
            .run_dir
            .strip_prefix(&self.dir)
            .ok()
            .map(|p| p.display().to_string());
        result.run_id = Some(outcome.summary.run_id.clone());
        result.metrics = super::metrics::headline(summary);
        result.diagnosis = summary.diagnosis.clone();
        let facts = results::record_facts(&outcome.run_dir, summary);
        result.queue_growth_ms = facts.queue.map(|(early, late)| late - early);
        result.queue_quarters_ms = facts.queue;
        if let (Some(cold), Some(first)) = (&mut result.cold_start, facts.first_token_unix_ns) {
            cold.first_token_s = Some(first.saturating_sub(cold.spawned_unix_ns) as f64 / 1e9);
        }
        if outcome.interrupted {
            result.status = Status::Interrupted;
            result.reason = Some("stopped by Ctrl-C; a resume runs it again".into());
        } else if summary.requests.ok == 0 {
            result.status = Status::Failed;
            let kinds: Vec<String> = summary
                .errors
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            result.reason = Some(format!("every request failed ({})", kinds.join(", ")));
        }
    }

    /// Writes the reading, the report and the history; prints the outcome.
    async fn finish(
        &mut self,
        args: &ExperimentArgs,
        analysis: Option<&(dyn Analysis + Sync)>,
    ) -> anyhow::Result<i32> {
        self.state.progress = if self.stopped() {
            Progress::Stopped
        } else {
            Progress::Finished
        };
        self.state.ended_unix_ns = Some(crate::units::unix_now_ns());
        self.state.reading = super::reading::read(&self.state);
        if let Some(analysis) = analysis {
            match analysis.analyse(&self.dir, &self.state) {
                Ok(section) => {
                    self.state.reading.push(section.verdict.clone());
                    self.state.study = Some(section);
                }
                Err(e) => eprintln!("study: no verdict: {e:#}"),
            }
        }
        self.state.write(&self.dir)?;
        let report = crate::report::html::experiment::write_report(&self.dir, &self.state)?;
        if let Some(db) = args.history.path() {
            crate::report::experiment_history::record(db, &self.dir, &self.state)
                .with_context(|| format!("recording the experiment in {}", db.display()))?;
        }
        print!("{}", super::reading::table(&self.state));
        for line in &self.state.reading {
            println!("{line}");
        }
        println!(
            "experiment: {}  (report: {})",
            self.dir.display(),
            report.display()
        );
        let failed = self.state.points.iter().any(|p| p.status == Status::Failed);
        Ok(match self.state.progress {
            Progress::Stopped if self.interrupted.load(Ordering::SeqCst) => 130,
            _ if failed => 1,
            _ => 0,
        })
    }
}

/// Moves the folder an interrupted attempt at a point left to
/// `<folder>.interrupted[-N]`: kept for a look, out of the new run's way.
fn set_aside(folder: &Path) {
    if !folder.exists() {
        return;
    }
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = (1..)
        .map(|n| {
            folder.with_file_name(if n == 1 {
                format!("{name}.interrupted")
            } else {
                format!("{name}.interrupted-{n}")
            })
        })
        .find(|p| !p.exists())
        .expect("a free name");
    match std::fs::rename(folder, &aside) {
        Ok(()) => eprintln!(
            "experiment: the interrupted attempt's files are kept in {}",
            aside.display()
        ),
        Err(e) => eprintln!("experiment: cannot move {} aside: {e}", folder.display()),
    }
}

/// The other axes' values of a combination (the line a saturation axis climbs).
fn outer_axes(case: &CasePlan, combo: &plan::Combo) -> BTreeMap<String, Value> {
    let climbed = case.saturation.as_ref().map(|(axis, _)| axis.as_str());
    combo
        .iter()
        .filter(|(k, _)| Some(k.value.as_str()) != climbed)
        .map(|(k, v)| (k.value.clone(), v.value.clone()))
        .collect()
}

/// The repeats' mean first- and last-quarter median queue time.
fn queue_trend(points: &[PointResult]) -> Option<(f64, f64)> {
    let quarters: Vec<(f64, f64)> = points.iter().filter_map(|p| p.queue_quarters_ms).collect();
    (!quarters.is_empty()).then(|| {
        let n = quarters.len() as f64;
        (
            quarters.iter().map(|q| q.0).sum::<f64>() / n,
            quarters.iter().map(|q| q.1).sum::<f64>() / n,
        )
    })
}

/// Where a profiler writes, from the server's environment (vLLM, SGLang).
fn profile_trace(lifecycle: Option<&Lifecycle>) -> Option<String> {
    ["VLLM_TORCH_PROFILER_DIR", "SGLANG_TORCH_PROFILER_DIR"]
        .iter()
        .find_map(|name| {
            lifecycle
                .and_then(|l| l.env.get(*name).cloned())
                .or_else(|| std::env::var(name).ok())
                .map(|dir| format!("{name}={dir}"))
        })
}

fn new_result(point: &Point) -> PointResult {
    PointResult {
        spec: point.spec.clone(),
        status: Status::Ok,
        reason: None,
        run_dir: None,
        run_id: None,
        metrics: BTreeMap::new(),
        diagnosis: None,
        queue_growth_ms: None,
        queue_quarters_ms: None,
        slo: None,
        launch: point.launch.clone(),
        cold_start: None,
        calls: Vec::new(),
        profile_trace: None,
        started_unix_ns: crate::units::unix_now_ns(),
        ended_unix_ns: 0,
    }
}
