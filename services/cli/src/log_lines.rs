//! The long-running services' log lines (`standalone`, `ingress`, `project …`), written by
//! one thread through a 64 KiB buffer that is flushed whenever no line waits: under load a
//! `write` to stdout carries many lines instead of one, and a lone line still goes out at
//! once. The ingress logs a line per accepted webhook; one `write` each was ~3-5 % of what
//! `standalone` acknowledges (issue 16: the same build acked that much more with
//! `RUST_LOG=warn`). One-shot commands keep writing directly: their results go to the same
//! stdout with `println!`, and a second writer could reorder the two.
//!
//! Lines wait in a bounded queue: when the output cannot keep up, a logging thread waits, as
//! it did on a direct write, rather than the queue growing without end. Dropping the
//! [`Flusher`] (at the end of `main`) waits until every queued line is written.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

/// Lines waiting for the writer thread.
const QUEUED: usize = 16_384;
/// The writer's buffer.
const BUFFER: usize = 64 * 1024;
/// How long the end of the process waits for the queued lines to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

enum Message {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// Makes a [`Line`] per log event (`tracing_subscriber::fmt::MakeWriter`).
#[derive(Clone)]
pub(crate) struct Lines {
    queue: SyncSender<Message>,
}

/// Waits, when dropped, until the lines queued before are written.
pub(crate) struct Flusher {
    queue: SyncSender<Message>,
}

/// One event's text, queued whole when the formatter drops it.
pub(crate) struct Line {
    queue: SyncSender<Message>,
    text: Vec<u8>,
}

/// Starts the writer thread over `out`.
pub(crate) fn start(out: impl Write + Send + 'static) -> std::io::Result<(Lines, Flusher)> {
    let (queue, lines) = sync_channel(QUEUED);
    std::thread::Builder::new()
        .name("log-lines".into())
        .spawn(move || write_lines(&lines, out))?;
    Ok((
        Lines {
            queue: queue.clone(),
        },
        Flusher { queue },
    ))
}

fn write_lines(lines: &Receiver<Message>, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(BUFFER, out);
    while let Ok(first) = lines.recv() {
        take(&mut out, first);
        while let Ok(next) = lines.try_recv() {
            take(&mut out, next);
        }
        let _ = out.flush();
    }
}

fn take(out: &mut impl Write, message: Message) {
    match message {
        // a failed write (stdout closed) loses the line, as a direct write would
        Message::Line(text) => drop(out.write_all(&text)),
        Message::Flush(done) => {
            let _ = out.flush();
            let _ = done.send(());
        }
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.text.is_empty() {
            let _ = self
                .queue
                .send(Message::Line(std::mem::take(&mut self.text)));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            queue: self.queue.clone(),
            text: Vec::new(),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let (done, flushed) = sync_channel(1);
        if self.queue.send(Message::Flush(done)).is_ok() {
            let _ = flushed.recv_timeout(FLUSH_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// An output the test reads, counting the `write`s it was given.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut out = self.0.lock().unwrap();
            out.0.extend_from_slice(buf);
            out.1 += 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log(lines: &Lines, text: &str) {
        let mut line = lines.make_writer();
        // the formatter may write an event in pieces: it is queued whole
        for piece in text.as_bytes().chunks(7) {
            line.write_all(piece).unwrap();
        }
    }

    #[test]
    fn every_line_arrives_whole_and_in_order_and_the_end_waits_for_them() {
        let out = Shared::default();
        let (lines, flusher) = start(out.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let lines = lines.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        log(
                            &lines,
                            &format!("thread {t} line {i} {}\n", "x".repeat(i % 300)),
                        );
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(flusher);
        let (text, writes) = out.0.lock().unwrap().clone();
        let text = String::from_utf8(text).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            let (t, i): (usize, usize) = (words[1].parse().unwrap(), words[3].parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s lines in order");
            assert_eq!(words[4].len(), i % 300, "line {t}/{i} whole");
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4], "every line written before the end");
        assert!(writes > 0);
    }

    /// Lines queued while the output is busy go out together, a buffer per `write`.
    #[test]
    fn lines_queued_behind_a_slow_output_share_writes() {
        let out = Shared::default();
        let (open, gate) = sync_channel::<()>(1);
        let gated = Gated {
            out: out.clone(),
            gate: Some(gate),
        };
        let (lines, flusher) = start(gated).unwrap();
        log(&lines, "first\n");
        for i in 0..1_000 {
            log(&lines, &format!("queued {i}\n"));
        }
        open.send(()).unwrap();
        drop(flusher);
        let (text, writes) = out.0.lock().unwrap().clone();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.lines().count(), 1_001);
        assert!(text.ends_with("queued 999\n"));
        assert!(writes <= 4, "{writes} writes for 1,001 lines");
    }

    /// Blocks its first write until the test opens the gate.
    struct Gated {
        out: Shared,
        gate: Option<Receiver<()>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(gate) = self.gate.take() {
                gate.recv().unwrap();
            }
            self.out.write(buf)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_lone_line_is_written_at_once() {
        let out = Shared::default();
        let (lines, _flusher) = start(out.clone()).unwrap();
        log(&lines, "one line\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.0.lock().unwrap().0.is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.0.lock().unwrap().0, b"one line\n");
    }
}
