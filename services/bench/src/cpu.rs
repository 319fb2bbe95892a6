//! CPU time spent, read from `/proc`: this process and the machine's Postgres server
//! processes (user + system). A machine whose wall-clock ceilings move by 2x between runs
//! still gives the CPU each delivery costs, which compares builds steadily.

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS: f64 = 100.0;

/// Seconds of CPU used so far by this process and every process named `postgres`.
pub(crate) fn seconds() -> f64 {
    let (own, postgres) = split();
    own + postgres
}

/// Seconds of CPU used so far: (this process, every process named `postgres`).
pub(crate) fn split() -> (f64, f64) {
    let own = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (f64::NAN, f64::NAN);
    };
    let (mut mine, mut postgres) = (0u64, 0u64);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(used) = used_ticks(&stat, pid == own) {
            match pid == own {
                true => mine += used,
                false => postgres += used,
            }
        }
    }
    (mine as f64 / TICKS, postgres as f64 / TICKS)
}

/// utime + stime of a `/proc/<pid>/stat` line, when it is this process or a `postgres` one.
fn used_ticks(stat: &str, own: bool) -> Option<u64> {
    // "pid (comm) state ppid ..."; comm may hold spaces and parentheses: it ends at the last ')'
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    if !own && &stat[open + 1..close] != "postgres" {
        return None;
    }
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // after comm: state is field 3 of the line; utime and stime are fields 14 and 15
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks_of_postgres_and_of_this_process_only() {
        let line =
            "4242 (postgres) S 1 4242 4242 0 -1 4194560 500 0 0 0 120 30 0 0 20 0 1 0 100 0 0";
        assert_eq!(used_ticks(line, false), Some(150));
        let other =
            "4243 (nginx (w)) S 1 4242 4242 0 -1 4194560 500 0 0 0 7 3 0 0 20 0 1 0 100 0 0";
        assert_eq!(used_ticks(other, false), None);
        assert_eq!(used_ticks(other, true), Some(10));
    }
}
