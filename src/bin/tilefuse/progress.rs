//! Progress over many cases: a bar on a terminal, one plain line per case otherwise (logs).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    verb: &'static str,
    total: usize,
    done: usize,
}

impl Progress {
    /// Progress over `total` steps of `verb` ("checking", "timing").
    pub fn new(verb: &'static str, total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:30}] {pos}/{len} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(verb);
            bar
        });
        Progress {
            bar,
            verb,
            total,
            done: 0,
        }
    }

    /// Announces the step about to run.
    pub fn start(&mut self, what: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => bar.set_message(what.to_string()),
            None => eprintln!("[{}/{}] {} {what}", self.done, self.total, self.verb),
        }
    }

    /// Marks the step done.
    pub fn finish_step(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
