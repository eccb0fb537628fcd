use std::io::Cursor;
use std::path::PathBuf;

use super::*;

fn reader(text: &str) -> ShareGptReader<Cursor<Vec<u8>>> {
    ShareGptReader::new(Cursor::new(text.as_bytes().to_vec()))
}

fn write_temp(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sharegpt.json");
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

const THREE: &str = r#"
 [
  {"id": "a1", "conversations": [{"from": "human", "value": "Hello {there}"}, {"from": "gpt", "value": "Hi \"friend\" ]}"}]},
	{ "conversations" : [ { "from" : "gpt" , "value" : "opening by the bot" },
      {"from":"human","value":"  second\nprompt\\ "} ] , "id" : 7 }
,{"id":"c3","conversations":[]}
 ]
"#;

#[test]
fn reads_every_record_of_a_complete_array_with_odd_whitespace() {
    let mut r = reader(THREE);
    let all: Vec<Conversation> = r.by_ref().collect::<Result<_>>().expect("records");
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].id, "a1");
    assert_eq!(
        all[0].turns,
        vec![
            ("human".to_owned(), "Hello {there}".to_owned()),
            ("gpt".to_owned(), "Hi \"friend\" ]}".to_owned())
        ]
    );
    assert_eq!(all[1].id, "7");
    assert_eq!(all[1].first_human_turn(), Some("  second\nprompt\\ "));
    assert!(all[2].turns.is_empty());
    assert_eq!(r.end(), Some(StreamEnd::Complete { records: 3 }));
}

#[test]
fn a_cut_off_tail_ends_the_stream_cleanly_with_the_complete_records() {
    let cut = r#"[{"id":"a","conversations":[{"from":"human","value":"one"}]},
{"id":"b","conversations":[{"from":"human","value":"two"}]},
{"id":"c","conversations":[{"from":"human","value":"thr"#;
    let mut r = reader(cut);
    let ids: Vec<String> = r.by_ref().map(|c| c.expect("record").id).collect();
    assert_eq!(ids, ["a", "b"]);
    match r.end() {
        Some(StreamEnd::Truncated { records: 2, partial_bytes }) => assert!(partial_bytes > 20),
        other => panic!("expected a truncated end after 2 records, got {other:?}"),
    }
}

#[test]
fn a_cut_between_records_is_reported_as_truncated() {
    let mut r = reader("[{\"id\":\"a\",\"conversations\":[]},\n  ");
    assert_eq!(r.by_ref().count(), 1);
    assert_eq!(r.end(), Some(StreamEnd::Truncated { records: 1, partial_bytes: 0 }));
}

#[test]
fn a_malformed_record_is_an_error_and_the_stream_goes_on() {
    let text = r#"[{"id":"a","conversations":"oops"},{"id":"b","conversations":[]}]"#;
    let out: Vec<Result<Conversation>> = reader(text).collect();
    assert_eq!(out.len(), 2);
    assert!(matches!(out[0], Err(Error::Record { index: 0, .. })));
    assert_eq!(out[1].as_ref().expect("second record").id, "b");
}

#[test]
fn a_file_that_is_not_an_array_is_refused() {
    let out: Vec<Result<Conversation>> = reader("  {\"id\":1}").collect();
    assert!(matches!(out.as_slice(), [Err(Error::NotAnArray { offset: 2 })]));
}

#[test]
fn first_prompts_skips_records_without_a_human_turn_and_cuts_at_char_boundaries() {
    let text = r#"[
{"id":"1","conversations":[{"from":"human","value":"  héllo wörld  "}]},
{"id":"2","conversations":[{"from":"gpt","value":"no human here"}]},
{"id":"3","conversations":[{"from":"human","value":"   "},{"from":"human","value":"later"}]},
{"id":"4","conversations":[{"from":"system","value":"sys"},{"from":"human","value":"ünïcödé"}]},
{"id":"5","conversations":[{"from":"human","value":"fifth"}]},
{"id":"6","conversations":[{"from":"human","value":"six"#;
    let (_dir, path) = write_temp(text);
    let all = first_prompts(&path, 0, 100, 4).expect("prompts");
    assert_eq!(all, ["héll", "ünïc", "fift"]);
    let rest = first_prompts(&path, 1, 1, 100).expect("prompts");
    assert_eq!(rest, ["ünïcödé"]);
    let again = first_prompts(&path, 1, 1, 100).expect("prompts");
    assert_eq!(again, rest, "reading is deterministic");
    assert!(first_prompts(&path, 0, 0, 10).expect("prompts").is_empty());
}

#[test]
fn first_prompts_on_a_missing_file_names_the_path() {
    let err =
        first_prompts(Path::new("/nonexistent/sharegpt.json"), 0, 1, 10).expect_err("missing");
    assert!(err.to_string().contains("/nonexistent/sharegpt.json"));
}

/// Heavy: reads the real (cut-off) ShareGPT dump from the artifact cache.
#[test]
fn real_sharegpt_first_thousand_prompts_are_read_without_scanning_the_file() {
    let path = std::env::var_os("COLLM_SHAREGPT").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("COLLM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ce-collm")
        });
        cache.join("data/ShareGPT_V3_unfiltered_cleaned_split.json")
    });
    assert!(
        path.exists(),
        "{} is missing: run tools/fetch-artifacts to fill the artifact cache",
        path.display()
    );
    let size = std::fs::metadata(&path).expect("metadata").len();
    let started = std::time::Instant::now();
    let prompts = first_prompts(&path, 0, 1000, 2000).expect("prompts");
    let elapsed = started.elapsed();
    assert_eq!(prompts.len(), 1000);
    assert!(prompts.iter().all(|p| !p.trim().is_empty() && p.chars().count() <= 2000));
    assert!(elapsed.as_secs_f64() < 5.0, "1000 prompts took {elapsed:?}");

    let mut r = ShareGptReader::open(&path).expect("open");
    let mut with_prompt = 0;
    for c in r.by_ref() {
        if c.expect("record").first_human_turn().is_some_and(|t| !t.trim().is_empty()) {
            with_prompt += 1;
            if with_prompt == 1000 {
                break;
            }
        }
    }
    assert!(
        r.bytes_consumed() < size / 4,
        "read {} of {size} bytes for 1000 prompts",
        r.bytes_consumed()
    );
    assert_eq!(r.end(), None, "the stream must not have been drained");
}
