//! Runs scenarios in order and reports like libtest: `test <name> ... ok|FAILED` per
//! scenario, the reasons of failures, then `N passed, M failed`.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;

/// Arguments and results of one run.
pub struct Runner {
    /// Scenario name filters from the command line (substring match); empty = all.
    filters: Vec<String>,
    /// Exact-match filtering (`--exact`, as libtest).
    exact: bool,
    /// Only print the scenario names (`--list`, as libtest).
    pub list: bool,
    /// Upper bound for one scenario, so a hung page cannot eat the CI budget.
    pub scenario_timeout: Duration,
    passed: usize,
    failed: Vec<(String, String)>,
}

impl Runner {
    /// Reads libtest-like arguments: names are filters; `--list`, `--exact` are honoured;
    /// other flags (`--nocapture`, `--test-threads=…`) are accepted and ignored.
    pub fn from_args() -> Self {
        let mut r = Self {
            filters: Vec::new(),
            exact: false,
            list: false,
            scenario_timeout: Duration::from_secs(300),
            passed: 0,
            failed: Vec::new(),
        };
        for a in std::env::args().skip(1) {
            match a.as_str() {
                "--list" => r.list = true,
                "--exact" => r.exact = true,
                s if s.starts_with('-') => {}
                s => r.filters.push(s.to_string()),
            }
        }
        r
    }

    /// Whether the scenario `name` is selected by the filters.
    pub fn wants(&self, name: &str) -> bool {
        self.filters.is_empty()
            || self.filters.iter().any(|f| {
                if self.exact {
                    f == name
                } else {
                    name.contains(f.as_str())
                }
            })
    }

    /// Runs one scenario (with the scenario timeout) and prints its outcome. Returns whether
    /// it passed.
    pub async fn run(&mut self, name: &str, scenario: impl Future<Output = Result<()>>) -> bool {
        println!("test {name} ...");
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.scenario_timeout, scenario).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "scenario took longer than {}s",
                self.scenario_timeout.as_secs()
            )),
        };
        let secs = started.elapsed().as_secs_f32();
        match outcome {
            Ok(()) => {
                println!("test {name} ... ok ({secs:.1}s)");
                self.passed += 1;
                true
            }
            Err(e) => {
                println!("test {name} ... FAILED ({secs:.1}s)\n    {e:#}");
                self.failed.push((name.to_string(), format!("{e:#}")));
                false
            }
        }
    }

    /// Records a failure that happened outside any scenario (e.g. the harness did not start).
    pub fn fail_all(&mut self, names: &[&str], why: &str) {
        let selected: Vec<&str> = names.iter().copied().filter(|n| self.wants(n)).collect();
        for n in selected {
            println!("test {n} ... FAILED\n    {why}");
            self.failed.push((n.to_string(), why.to_string()));
        }
    }

    /// Prints the summary; returns whether everything passed.
    pub fn finish(&self) -> bool {
        if !self.failed.is_empty() {
            println!("\nfailures:");
            for (name, why) in &self.failed {
                println!("    {name}: {why}");
            }
        }
        println!("\n{} passed, {} failed", self.passed, self.failed.len());
        self.failed.is_empty()
    }
}
