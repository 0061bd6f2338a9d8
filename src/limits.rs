//! Operator limits on every child (issue 18): the values given by flags or their environment
//! fallbacks, validated once at startup. Ground floor: plain data and parsing; it applies
//! nothing (process/limits.rs turns them into rlimits and timers) and imports none of ours.

use std::time::Duration;

/// Limits the operator sets for every process a client starts; a client cannot raise them.
/// `None` means "not limited by us" (the child inherits the daemon's own rlimits).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time after which the child's tree is killed.
    pub process_timeout: Option<Duration>,
    /// RLIMIT_CPU in seconds (SIGXCPU at the limit, SIGKILL a second later).
    pub cpu_secs: Option<u64>,
    /// RLIMIT_AS in bytes.
    pub memory_bytes: Option<u64>,
    /// RLIMIT_NPROC: counts every process of the daemon's user, host-wide; root ignores it.
    pub max_child_processes: Option<u64>,
    /// Output bytes (all streams together) after which the child's tree is killed.
    pub max_output_bytes: Option<u64>,
    /// RLIMIT_FSIZE in bytes.
    pub max_file_size_bytes: Option<u64>,
    /// RLIMIT_NOFILE.
    pub max_open_files: Option<u64>,
}

/// The flags (without their leading `--`) whose values are limits, in the order `Limits`
/// lists them; each falls back to `EXEC_SERVER_<FLAG IN UPPER SNAKE CASE>`.
pub const FLAGS: [&str; 7] = [
    "process-timeout-secs",
    "cpu-limit-secs",
    "memory-limit-bytes",
    "max-child-processes",
    "max-output-bytes",
    "max-file-size-bytes",
    "max-open-files",
];

/// The environment variable a flag falls back to.
pub fn env_name(flag: &str) -> String {
    format!("EXEC_SERVER_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

impl Limits {
    /// Builds the limits from each flag's value (`values[i]` for `FLAGS[i]`), falling back to
    /// the environment through `env`. A value that is not a positive integer is refused with
    /// a message naming where it came from.
    pub fn parse(
        values: [Option<&str>; 7],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Limits, String> {
        let mut parsed = [None; 7];
        for (i, flag) in FLAGS.iter().enumerate() {
            let (source, text) = match values[i] {
                Some(v) => (format!("--{flag}"), v.to_string()),
                None => {
                    let name = env_name(flag);
                    match env(&name) {
                        Some(v) => (name, v),
                        None => continue,
                    }
                }
            };
            match text.trim().parse::<u64>() {
                Ok(n) if n > 0 => parsed[i] = Some(n),
                _ => return Err(format!("invalid {source} `{text}`: expected a positive integer")),
            }
        }
        let [timeout, cpu, memory, nproc, output, fsize, nofile] = parsed;
        Ok(Limits {
            process_timeout: timeout.map(Duration::from_secs),
            cpu_secs: cpu,
            memory_bytes: memory,
            max_child_processes: nproc,
            max_output_bytes: output,
            max_file_size_bytes: fsize,
            max_open_files: nofile,
        })
    }

    /// The limits as a JSON object (set ones only), for logs and the audit log.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        let mut put = |key: &str, value: Option<u64>| {
            if let Some(v) = value {
                map.insert(key.to_string(), v.into());
            }
        };
        put("processTimeoutSecs", self.process_timeout.map(|d| d.as_secs()));
        put("cpuLimitSecs", self.cpu_secs);
        put("memoryLimitBytes", self.memory_bytes);
        put("maxChildProcesses", self.max_child_processes);
        put("maxOutputBytes", self.max_output_bytes);
        put("maxFileSizeBytes", self.max_file_size_bytes);
        put("maxOpenFiles", self.max_open_files);
        serde_json::Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_env_and_bad_values_are_named() {
        let env = |name: &str| match name {
            "EXEC_SERVER_CPU_LIMIT_SECS" => Some("3".to_string()),
            "EXEC_SERVER_MAX_OPEN_FILES" => Some("64".to_string()),
            _ => None,
        };
        let mut values = [None; 7];
        values[0] = Some("5");
        values[6] = Some("32");
        let limits = Limits::parse(values, &env).expect("valid");
        assert_eq!(limits.process_timeout, Some(Duration::from_secs(5)));
        assert_eq!(limits.cpu_secs, Some(3));
        assert_eq!(limits.max_open_files, Some(32));
        assert_eq!(limits.memory_bytes, None);
        let mut values = [None; 7];
        values[4] = Some("0");
        assert_eq!(
            Limits::parse(values, &|_| None).err().as_deref(),
            Some("invalid --max-output-bytes `0`: expected a positive integer")
        );
        let env = |name: &str| (name == "EXEC_SERVER_MEMORY_LIMIT_BYTES").then(|| "1G".to_string());
        assert_eq!(
            Limits::parse([None; 7], &env).err().as_deref(),
            Some("invalid EXEC_SERVER_MEMORY_LIMIT_BYTES `1G`: expected a positive integer")
        );
    }
}
