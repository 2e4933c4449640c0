//! The shipped operator files run against the real CLI: every `stowage` command of the
//! systemd units and the crontab in `deploy/`, and every command line of MIGRATION.md, is
//! read from the file, pointed at a temp store and the in-process S3 server, and run with
//! the built binary. A renamed or removed flag fails here (clap's usage error, exit 2),
//! not on the operator's server at 3 a.m.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::support::cli::{output, stowage, Run};
use crate::support::s3::TestS3;

/// Where the shipped files put things, and what the test uses instead.
struct Place {
    root: PathBuf,
    prom: PathBuf,
    bucket: String,
    _dir: tempfile::TempDir,
}

impl Place {
    fn new(s3: &TestS3) -> Place {
        let dir = tempfile::tempdir().unwrap();
        Place {
            root: dir.path().join("storage"),
            prom: dir.path().join("stowage.prom"),
            bucket: s3.bucket().to_owned(),
            _dir: dir,
        }
    }

    /// A command line of a shipped file, its paths and names made the test's: the
    /// arguments after the program name (which must be stowage).
    fn args(&self, line: &str, env: &[(String, String)]) -> Vec<String> {
        let mut line = line.to_owned();
        for (k, v) in env {
            line = line.replace(&format!("${{{k}}}"), v);
        }
        let line = line
            .replace("${S3_BUCKET_NAME}", &self.bucket)
            .replace("$S3_BUCKET_NAME", &self.bucket)
            .replace("/opt/meme-maker/storage", self.root.to_str().unwrap())
            .replace(
                "/var/lib/node_exporter/textfile/stowage.prom",
                self.prom.to_str().unwrap(),
            )
            .replace("127.0.0.1:8000", "127.0.0.1:0");
        // A shell redirection (`--json > bulk.json`) is the shell's, not stowage's.
        let line = line.split(" > ").next().unwrap();
        assert!(!line.contains('$'), "an unexpanded variable in {line:?}");
        let mut words = line.split_whitespace().map(str::to_owned);
        let program = words.next().unwrap();
        assert!(
            program == "stowage" || program == "/usr/local/bin/stowage",
            "{program:?} in {line:?}"
        );
        words.collect()
    }
}

/// Runs one shipped command and checks that the CLI took it: exit 0 (or another code in
/// `ok`), never clap's usage error. `serve` is started, probed and stopped.
fn run_shipped(s3: &TestS3, args: &[String], ok: &[i32], from: &str) {
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    if argv.first() == Some(&"serve") {
        return serve_shipped(s3, &argv, from);
    }
    let r: Run = output(stowage(Some(s3), &argv).output().unwrap());
    assert!(
        !r.stderr.contains("Usage:"),
        "{from}: the CLI refused `stowage {}`:\n{r:?}",
        argv.join(" ")
    );
    assert!(
        r.code == 0 || ok.contains(&r.code),
        "{from}: `stowage {}` failed:\n{r:?}",
        argv.join(" ")
    );
}

fn serve_shipped(s3: &TestS3, argv: &[&str], from: &str) {
    let mut child = stowage(Some(s3), argv)
        .env_remove("STORAGE_URL_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("listening on http://"))
        .collect();
    let started = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        started,
        "{from}: `stowage {}` did not start:\n{}",
        argv.join(" "),
        lines.join("\n")
    );
}

/// `Environment=K=V` assignments and `Exec*=` command lines of a systemd unit, with `%%`
/// (systemd's escaped `%`) unescaped.
fn unit_commands(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let (mut env, mut cmds) = (Vec::new(), Vec::new());
    for line in text.lines().map(str::trim) {
        if let Some(kv) = line.strip_prefix("Environment=") {
            let (k, v) = kv.split_once('=').expect("Environment=K=V");
            env.push((k.to_owned(), v.to_owned()));
        } else if line.starts_with("Exec") {
            let (_, cmd) = line.split_once('=').unwrap();
            cmds.push(cmd.replace("%%", "%"));
        }
    }
    (env, cmds)
}

/// `K=V` lines and the commands of each job line of a cron.d file (`m h dom mon dow user
/// command`), `;`-separated commands split and cron's `\%` unescaped.
fn cron_commands(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let (mut env, mut cmds) = (Vec::new(), Vec::new());
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap();
        if let Some((k, v)) = first.split_once('=').filter(|_| !line.contains(' ')) {
            env.push((k.to_owned(), v.to_owned()));
            continue;
        }
        let command = line
            .splitn(7, char::is_whitespace)
            .nth(6)
            .expect("a job line");
        assert!(
            !command.replace("\\%", "").contains('%'),
            "an unescaped % ends cron's command: {line}"
        );
        cmds.extend(
            command
                .replace("\\%", "%")
                .split(';')
                .map(|c| c.trim().to_owned()),
        );
    }
    (env, cmds)
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn seed(s3: &TestS3) {
    for n in 0..3 {
        s3.put_raw(
            &format!("clips/{n}/video.mp4"),
            format!("clip {n}").as_bytes(),
        )
        .unwrap();
    }
}

#[test]
fn every_command_in_deploy_runs_with_the_real_cli() {
    let s3 = TestS3::start();
    seed(&s3);
    let place = Place::new(&s3);
    std::fs::create_dir(&place.root).unwrap();
    stowage::local::mark_store(&place.root).unwrap();

    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut ran = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let (env, cmds) = match file.extension().and_then(|e| e.to_str()) {
            Some("service") => unit_commands(&text),
            Some("cron") => cron_commands(&text),
            // A timer starts its service; it has no command of its own.
            Some("timer") => {
                let service = name.replace(".timer", ".service");
                assert!(
                    deploy_dir().join(&service).exists(),
                    "{name} without {service}"
                );
                continue;
            }
            _ => panic!("deploy/{name}: a file this test does not know how to check"),
        };
        assert!(!cmds.is_empty(), "deploy/{name} runs nothing");
        for cmd in cmds {
            let args = place.args(&cmd, &env);
            // disk exits 1 above --warn-above: the test machine's disk may be that full.
            run_shipped(&s3, &args, &[1], &format!("deploy/{name}"));
            ran.push(format!("{name}: {}", args[0]));
        }
    }
    ran.sort();
    assert_eq!(
        ran,
        [
            "stowage-cleanup.service: cleanup",
            "stowage-cleanup.service: disk",
            "stowage-serve.service: serve",
            "stowage.cron: cleanup",
            "stowage.cron: disk",
        ]
    );
    assert!(place.prom.exists(), "disk wrote the node_exporter file");
}

#[test]
fn every_command_in_migration_md_runs_in_order_with_the_real_cli() {
    let s3 = TestS3::start();
    seed(&s3);
    let place = Place::new(&s3);
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("MIGRATION.md"))
        .unwrap();
    let mut ran = Vec::new();
    for line in text.lines() {
        // Code lines are indented; the runbook's commands are the ones that start with
        // `stowage`.
        let Some(cmd) = line
            .strip_prefix("    ")
            .map(str::trim_start)
            .filter(|l| l.starts_with("stowage "))
        else {
            continue;
        };
        let args = place.args(cmd, &[]);
        run_shipped(&s3, &args, &[1], "MIGRATION.md");
        ran.push(format!(
            "{} {}",
            args[0],
            args.get(1).map_or("", |s| s.as_str())
        ));
    }
    assert_eq!(
        ran,
        [
            "migrate s3-to-local",
            "migrate s3-to-local",
            "verify s3-to-local",
            "serve --root",
            "migrate s3-to-local",
            "verify s3-to-local",
            "cleanup --root",
            "disk --root",
            "migrate local-to-s3",
        ]
    );
    // The walk copied the bucket, as the runbook says it does.
    assert_eq!(
        std::fs::read(place.root.join("clips/2/video.mp4")).unwrap(),
        b"clip 2"
    );
}

/// systemd's own check of the units (unknown keys, bad values, a missing executable),
/// with the binary path pointed at the built one.
#[test]
#[ignore = "needs systemd-analyze (the systemd package)"]
fn the_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for e in std::fs::read_dir(deploy_dir()).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !(name.ends_with(".service") || name.ends_with(".timer")) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/stowage", env!("CARGO_BIN_EXE_stowage"));
        std::fs::write(dir.path().join(&name), text).unwrap();
        units.push(dir.path().join(&name));
    }
    assert_eq!(units.len(), 3);
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // EnvironmentFile=/etc/stowage/env need not exist on the test machine.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("/etc/stowage/env"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "{}\n{stderr}",
        out.status
    );
}
