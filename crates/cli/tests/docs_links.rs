//! What a clone shows must not point outside the clone: the README, `docs/` and the recorded
//! benchmark results link only files the repository has, and name no path of one machine.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    for dir in ["docs", "bench/results"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        found.sort();
        pages.extend(found);
    }
    pages
}

/// Targets of markdown links `[text](target)` that are not web addresses or anchors.
fn local_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split('#').next().unwrap_or_default().trim();
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            links.push(target.to_string());
        }
    }
    links
}

#[test]
fn pages_link_only_files_of_the_repository() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("readable");
        let dir = page.parent().expect("in a directory");
        for link in local_links(&text) {
            let target = dir.join(&link);
            let inside = target
                .canonicalize()
                .is_ok_and(|t| t.starts_with(repo().canonicalize().expect("repo")));
            if !inside {
                broken.push(format!("{}: {link}", page.display()));
            }
        }
        // The README's examples may write to /tmp; recorded results and docs name no such path.
        let is_readme = page.ends_with("README.md");
        let outside: &[&str] = if is_readme {
            &["../shared", "DESIGN.md"]
        } else {
            &["/root/", "/home/", "/work/", "/tmp/", "../shared", "DESIGN.md"]
        };
        for (n, line) in text.lines().enumerate() {
            for outside in outside {
                if line.contains(outside) {
                    broken.push(format!("{}:{}: names {outside:?}: {line}", page.display(), n + 1));
                }
            }
        }
    }
    assert!(broken.is_empty(), "links or paths a clone lacks:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_links_the_architecture_doc() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    assert!(
        local_links(&readme).iter().any(|l| l == "docs/architecture.md"),
        "README lacks the link"
    );
    let doc = std::fs::read_to_string(repo().join("docs/architecture.md")).expect("the doc");
    assert!(doc.contains("```mermaid"), "the architecture doc has its diagram");
}
