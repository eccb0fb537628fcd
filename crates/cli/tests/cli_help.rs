//! Every command a user runs explains itself: `--help` of `collm`, `edge-agent`,
//! `cloud-worker` and `collm-operator`, and of each of their subcommands, says what every flag
//! and argument does; modes list the values they take; `collm`'s summary names every subcommand.

use std::path::PathBuf;
use std::process::Command;

/// A workspace binary (they share one target directory).
fn bin(name: &str) -> PathBuf {
    let collm = PathBuf::from(env!("CARGO_BIN_EXE_collm"));
    let path = collm.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --release --workspace)",
        path.display()
    );
    path
}

/// One entry of a help page: its section, its first line (the flag or argument) and its help.
#[derive(Debug)]
struct Entry {
    section: String,
    spec: String,
    help: String,
}

/// The entries of clap's help output, whether it puts help beside the flag or under it.
fn entries(page: &str) -> Vec<Entry> {
    let lines: Vec<&str> = page.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut section = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line.trim_end_matches(':').to_string();
            continue;
        }
        let trimmed = line.trim_start();
        if section.is_empty() || trimmed.is_empty() || indent(line) > 6 {
            continue;
        }
        let (spec, beside) = match trimmed.split_once("  ") {
            Some((spec, help)) => (spec.trim(), help.trim().to_string()),
            None => (trimmed.trim(), String::new()),
        };
        let mut help = beside;
        // Help under the flag: the following lines indented deeper, up to the next entry.
        // (Paragraphs of it, such as a list of possible values, are separated by blank lines.)
        loop {
            let next = lines[i..].iter().position(|l| !l.trim().is_empty()).map(|n| i + n);
            match next {
                // A flag line of a short help page (`      --x <X>` under `  -h, --help`) is
                // indented deeper than a short flag but is an entry of its own.
                Some(n)
                    if indent(lines[n]) > indent(line) + 2
                        && !(indent(lines[n]) <= 6 && lines[n].trim_start().starts_with('-')) =>
                {
                    help.push(' ');
                    help.push_str(lines[n].trim());
                    i = n + 1;
                }
                _ => break,
            }
        }
        out.push(Entry { section: section.clone(), spec: spec.to_string(), help });
    }
    out
}

/// Help without clap's own annotations (`[default: ...]`, `[possible values: ...]`).
fn own_words(help: &str) -> String {
    let mut words = String::new();
    let mut depth = 0;
    for c in help.chars() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ if depth == 0 => words.push(c),
            _ => {}
        }
    }
    words.trim().to_string()
}

/// Every flag or argument without help, in `program subcommand...` and below.
fn undocumented(
    program: &PathBuf,
    path: &[String],
    found: &mut Vec<String>,
    modes: &mut Vec<String>,
) {
    let out = Command::new(program).args(path).arg("--help").output().expect("runs");
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    let name = format!(
        "{} {}",
        program.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        path.join(" ")
    );
    assert!(out.status.success() && !page.is_empty(), "{name} --help: {page}");
    for e in entries(&page) {
        match e.section.as_str() {
            "Commands" => {
                let sub = e.spec.split_whitespace().next().unwrap_or_default().to_string();
                if sub == "help" {
                    continue;
                }
                if own_words(&e.help).is_empty() {
                    found.push(format!("{name}: subcommand {sub}"));
                }
                let mut deeper = path.to_vec();
                deeper.push(sub);
                undocumented(program, &deeper, found, modes);
            }
            "Options" | "Arguments" => {
                if own_words(&e.help).is_empty() {
                    found.push(format!("{name}: {}", e.spec));
                }
                if e.spec.contains("--mode ") || e.spec.contains("--method ") {
                    modes.push(format!("{name}: {} {}", e.spec, e.help));
                }
            }
            _ => {}
        }
    }
}

#[test]
fn every_flag_of_every_command_has_help_and_modes_list_their_values() {
    let mut found = Vec::new();
    let mut modes = Vec::new();
    for program in ["collm", "edge-agent", "cloud-worker", "collm-operator"] {
        undocumented(&bin(program), &[], &mut found, &mut modes);
    }
    assert!(
        found.is_empty(),
        "flags, arguments or subcommands without help:\n{}",
        found.join("\n")
    );
    assert!(modes.len() >= 5, "the --mode and --method flags were not all found: {modes:#?}");
    for mode in &modes {
        assert!(
            mode.to_lowercase().contains("possible values:"),
            "a --mode or --method that does not list its values: {mode}"
        );
    }
}

#[test]
fn the_summary_lists_every_subcommand_and_full_is_the_cloud_mode() {
    let out = Command::new(bin("collm")).arg("--help").output().expect("runs");
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    let about = page.lines().next().unwrap_or_default();
    let subcommands: Vec<String> = entries(&page)
        .into_iter()
        .filter(|e| e.section == "Commands" && e.spec != "help")
        .map(|e| e.spec)
        .collect();
    assert!(subcommands.len() >= 9, "{page}");
    for sub in &subcommands {
        assert!(about.contains(sub.as_str()), "the summary {about:?} does not name {sub}");
    }
    // One name for the whole model: the API's `cloud`; `full` stays an alias.
    let out = Command::new(bin("collm")).args(["generate", "--help"]).output().expect("runs");
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    for value in ["- cloud:", "- standalone:", "- collaborative:", "- speculative:"] {
        assert!(page.contains(value), "generate --mode does not list {value}: {page}");
    }
    assert!(page.contains("`full`"), "the cloud mode's help names its alias: {page}");
    let out = Command::new(bin("collm"))
        .args(["generate", "--bundle", "/nonexistent", "--mode", "full", "--prompt", "x"])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("invalid value"), "--mode full is refused: {err}");
    assert!(err.contains("/nonexistent"), "it got as far as the bundle: {err}");
}

#[test]
fn help_parsing_sees_flags_without_help() {
    let page = "Usage: x\n\nOptions:\n      --bundle <BUNDLE>\n          \n      --seed <SEED>\n          [default: 0]\n      --mode <MODE>\n          Who answers\n\n          Possible values:\n          - a: first\n\n          [default: a]\n  -h, --help\n          Print help\n";
    let e = entries(page);
    let bare: Vec<&str> =
        e.iter().filter(|e| own_words(&e.help).is_empty()).map(|e| e.spec.as_str()).collect();
    assert_eq!(bare, ["--bundle <BUNDLE>", "--seed <SEED>"], "{e:#?}");
    assert!(e[2].help.contains("Possible values: - a: first"), "{e:#?}");
    let short = "Options:\n  -h, --help     Print help\n      --x <X>\n";
    let bare: Vec<String> = entries(short)
        .into_iter()
        .filter(|e| own_words(&e.help).is_empty())
        .map(|e| e.spec)
        .collect();
    assert_eq!(bare, ["--x <X>"]);
}
