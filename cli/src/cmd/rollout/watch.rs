//! `picketctl rollout watch`: on a terminal, a bar per wave (hosts done of
//! hosts) and a line per running host with its last output line
//! (indicatif); otherwise a plain line per change of a host's state; with
//! `-o json`, the status object at each change. Exits 0 only if the
//! rollout succeeded.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use picket_proto::v1;
use tokio_stream::StreamExt;

use super::rollout_json;
use crate::args::Format;
use crate::client::Admin;
use crate::cmd::rpc;
use crate::output::{escape_terminal as esc, json_line};

const DONE: [&str; 5] = [
    "succeeded",
    "failed",
    "unreachable",
    "rolled_back",
    "skipped",
];

pub async fn run(admin: &mut Admin, id: String, fmt: Format) -> anyhow::Result<()> {
    let mut stream = admin
        .watch_rollout(v1::GetRolloutRequest { id })
        .await
        .map_err(rpc)?
        .into_inner();
    let tty = fmt == Format::Table && std::io::stdout().is_terminal();
    let mut bars = Bars::new(tty);
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut last = None;
    while let Some(item) = stream.next().await {
        let r = item.map_err(rpc)?;
        let mut out = std::io::stdout().lock();
        match fmt {
            Format::Json => json_line(&mut out, &rollout_json(&r, true))?,
            Format::Table if tty => bars.draw(&r),
            Format::Table => {
                for w in &r.waves {
                    for h in &w.hosts {
                        if seen.get(&h.name) != Some(&h.state) {
                            writeln!(
                                out,
                                "{} wave {}: {} {}",
                                r.id,
                                esc(&w.name),
                                esc(&h.name),
                                h.state
                            )?;
                            seen.insert(h.name.clone(), h.state.clone());
                        }
                    }
                }
                if seen.get("") != Some(&r.state) {
                    writeln!(out, "{} {}", r.id, r.state)?;
                    seen.insert(String::new(), r.state.clone());
                }
            }
        }
        out.flush()?;
        last = Some(r);
    }
    bars.finish();
    match last {
        Some(r) if r.state == "succeeded" => Ok(()),
        Some(r) => Err(crate::Failed(format!("rollout {} ended {}", r.id, r.state)).into()),
        None => Err(crate::Failed("the watch ended before any news".into()).into()),
    }
}

/// The terminal view: a bar per wave, a spinner per running host.
struct Bars {
    multi: Option<MultiProgress>,
    waves: Vec<ProgressBar>,
    hosts: BTreeMap<String, ProgressBar>,
}

impl Bars {
    fn new(tty: bool) -> Self {
        Bars {
            multi: tty.then(MultiProgress::new),
            waves: Vec::new(),
            hosts: BTreeMap::new(),
        }
    }

    fn draw(&mut self, r: &v1::Rollout) {
        let Some(multi) = &self.multi else { return };
        let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        while self.waves.len() < r.waves.len() {
            let b = multi.add(ProgressBar::new(0));
            b.set_style(style.clone());
            self.waves.push(b);
        }
        for (w, bar) in r.waves.iter().zip(&self.waves) {
            bar.set_prefix(esc(&w.name).into_owned());
            bar.set_length(w.hosts.len() as u64);
            let done = w.hosts.iter().filter(|h| DONE.contains(&h.state.as_str()));
            bar.set_position(done.count() as u64);
            bar.set_message(format!("{} · rollout {}", w.state, r.state));
            for h in &w.hosts {
                let running = h.state == "running";
                match (running, self.hosts.contains_key(&h.name)) {
                    (true, false) => {
                        let s = multi.add(ProgressBar::new_spinner());
                        s.enable_steady_tick(std::time::Duration::from_millis(120));
                        self.hosts.insert(h.name.clone(), s);
                    }
                    (false, true) => {
                        if let Some(s) = self.hosts.remove(&h.name) {
                            s.finish_and_clear();
                            multi.remove(&s);
                        }
                        let _ = multi.println(format!("  {} {}", esc(&h.name), h.state));
                    }
                    _ => {}
                }
                if let Some(s) = self.hosts.get(&h.name) {
                    let step = h.steps.last().map(|s| format!("{} {}", s.phase, s.name));
                    s.set_message(format!(
                        "{} {} | {}",
                        esc(&h.name),
                        step.unwrap_or_default(),
                        esc(&h.last_line)
                    ));
                }
            }
        }
    }

    fn finish(&mut self) {
        for s in self.hosts.values() {
            s.finish_and_clear();
        }
        for b in &self.waves {
            b.abandon();
        }
    }
}
