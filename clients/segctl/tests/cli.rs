//! segctl against a real segmentd on an ephemeral port: the binary is run as a user would.

use std::path::Path;
use std::process::{Command, Output};

use segmentd::config::Config;

/// A segmentd server on its own runtime thread, with a temporary data directory.
struct Server {
    addr: String,
    /// Shuts the server down when sent to (or dropped).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        Server::start_with(|_| {}, &[])
    }

    /// A server `tune` adjusts; `segctl stats` with `probe` arguments is its readiness probe.
    fn start_with(tune: impl FnOnce(&mut Config), probe: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let mut config = Config::with_data_dir(dir.path().join("data"));
        config.fsync = segmentd::wal::FsyncMode::Never;
        tune(&mut config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(segmentd::server::run(listener, config, async move {
            let _ = stopped.await;
        }));
        let server = Server {
            addr,
            stop: Some(stop),
            _dir: dir,
            _runtime: runtime,
        };
        // Ready once stats answers (recovery done).
        for _ in 0..200 {
            let args: Vec<&str> = ["stats"].iter().chain(probe).copied().collect();
            if server.segctl(&args).status.success() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("segmentd did not become ready");
    }

    fn segctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_segctl"))
            .args(args)
            .env("SEGMENTD_ADDR", &self.addr)
            .output()
            .unwrap()
    }

    /// Runs segctl and returns stdout, failing the test with stderr if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.segctl(args);
        assert!(
            out.status.success(),
            "segctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Server {
    /// Runs a read command with `-o json` and parses its answer.
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let args: Vec<&str> = args.iter().copied().chain(["-o", "json"]).collect();
        let text = self.ok(&args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("segctl {args:?}: {e}: {text}"))
    }

    /// A number of `segctl stats`.
    fn stat(&self, name: &str) -> u64 {
        let stats = self.json(&["stats"]);
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    }
}

/// Whether a line of an aligned table starts with `words`, column by column (cells split on
/// whitespace).
fn has_row(table: &str, words: &str) -> bool {
    let want: Vec<&str> = words.split_whitespace().collect();
    table
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>().starts_with(&want))
}

fn first_number(s: &str) -> u64 {
    s.split_whitespace().find_map(|w| w.parse().ok()).unwrap()
}

#[test]
fn demo_fills_a_server_once_and_leaves_what_exists() {
    let server = Server::start();
    let out = server.ok(&["demo", "--customers", "800", "--seed", "3"]);
    assert_eq!(server.stat("customers"), 800);
    let segments = server.json(&["segment", "list"]);
    let size = |id: &str| -> u64 {
        segments
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["segment_id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {segments}"))["size"]
            .as_u64()
            .unwrap()
    };
    for id in [
        "good",
        "men-over-40",
        "recent-buyers",
        "vip",
        "opted-in",
        "golfers",
        "rfm.champions",
    ] {
        size(id);
    }
    assert!(size("golfers") > 0 && size("men-over-40") > 0, "{out}");
    assert!(out.contains("customers scored"), "{out}");
    // Again: the customers are updated, the segments left as they are.
    let again = server.ok(&["demo", "--customers", "800", "--seed", "3"]);
    assert!(again.contains("good exists: left as it is"), "{again}");
    assert_eq!(server.stat("customers"), 800);
}

#[test]
fn generated_base_loads_and_segments_work_end_to_end() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().to_str().unwrap();
    server.ok(&["gen", "--customers", "3000", "--seed", "5", "--out", demo]);

    server.ok(&["load", "customers", &format!("{demo}/customers.csv")]);
    let out = server.segctl(&["load", "orders", &format!("{demo}/orders.csv")]);
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("0 customers created"), "{summary}");
    assert_eq!(server.stat("customers"), 3000);
    let info = server.ok(&["info"]);
    assert!(
        has_row(&info, "role primary") && has_row(&info, "state serving"),
        "{info}"
    );
    let info = server.json(&["info"]);
    assert!(info["last_sequence"].as_u64().unwrap() > 0, "{info}");
    assert_eq!(server.ok(&["health"]), "SERVING\n");
    assert_eq!(
        server.ok(&["health", "--service", "segmentd.v1.Membership"]),
        "SERVING\n"
    );
    let unknown = server.segctl(&["health", "--service", "segmentd.v1.Nope"]);
    assert_eq!(unknown.status.code(), Some(3), "not found: {unknown:?}");

    // A rule segment: its size matches a preview of the same rule.
    let created = server.ok(&[
        "segment",
        "create",
        "good",
        "--rule",
        "total_spent > 1000",
        "--name",
        "Good",
    ]);
    let size = first_number(created.split('(').nth(1).unwrap());
    assert!(size > 0 && size < 3000, "{created}");
    let preview = server.ok(&["segment", "preview", "total_spent > 1000"]);
    assert_eq!(first_number(&preview), size);
    server.ok(&[
        "segment",
        "create",
        "men-over-40",
        "--rule",
        "gender = \"M\" and age > 40",
    ]);

    // An activity-populated segment.
    server.ok(&[
        "segment",
        "create",
        "golfers",
        "--name",
        "Golfers",
        "--allow-activities",
    ]);
    let added = server.ok(&[
        "activity",
        "add",
        "golfers",
        "--activity",
        "golf-week",
        "C000000007",
        "C000000008",
    ]);
    assert!(added.starts_with("2 changed"), "{added}");
    let check = server.ok(&["check", "C000000007", "golfers", "good"]);
    assert!(has_row(&check, "golfers yes"), "{check}");
    let list = server.ok(&["segment", "list"]);
    assert!(has_row(&list, "segment_id size name rule"), "a header: {list}");
    assert!(has_row(&list, "golfers 2 Golfers"), "{list}");

    // Export: a header and one line per member.
    let export = dir.path().join("good.csv");
    server.ok(&[
        "segment",
        "export",
        "good",
        "--fields",
        "city,total_spent",
        "--out",
        export.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&export).unwrap();
    assert_eq!(text.lines().next(), Some("customer_id,email,city,total_spent"));
    assert_eq!(text.lines().count() as u64, size + 1);
    // `check` answers for `good` as its export lists the customer.
    let exported = text.lines().any(|l| l.starts_with("C000000007,"));
    let expected = format!("good {}", if exported { "yes" } else { "no" });
    assert!(has_row(&check, &expected), "{check} (exported: {exported})");
    let jsonl = server.ok(&["segment", "export", "golfers", "--format", "jsonl"]);
    assert_eq!(jsonl.lines().count(), 2);
    assert!(jsonl.contains("\"customer_id\":\"C000000007\""), "{jsonl}");

    let explain = server.ok(&["segment", "explain", "C000000007", "golfers"]);
    assert!(has_row(&explain, "decided_by included_by_activity"), "{explain}");
    let customer = server.ok(&["customer", "get", "C000000007"]);
    assert!(has_row(&customer, "email customer7.5@example.com"), "{customer}");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn bad_rows_are_reported_with_file_and_line() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.csv",
        "customer_id,email,household_size,birth_date\nA1,a1@example.com,2,1980-01-02\nA2,,two,1980-01-02\nA3,,3,\n",
    );
    // Default --max-errors 0: the first bad row stops the load, non-zero exit.
    let out = server.segctl(&["load", "customers", &file]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{file}:3: `household_size`")), "{err}");
    assert!(err.contains("stopped after 1 bad row (--max-errors 0)"), "{err}");

    // Default stop: nothing applied, exit 1.
    assert_eq!(out.status.code(), Some(1));
    // Tolerated: the good rows load, and the exit code (3) says only part of the file did.
    let out = server.segctl(&["load", "customers", &file, "--max-errors", "1"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 bad row was skipped"));
    assert_eq!(server.stat("customers"), 2);

    // Dry run: checked, nothing sent.
    let more = write(dir.path(), "d.csv", "customer_id,city\nB1,Lyon\nB2,Nice\n");
    server.ok(&["load", "customers", &more, "--dry-run"]);
    assert_eq!(server.stat("customers"), 2);

    // A server-side refusal names the line too.
    let bad_email = write(
        dir.path(),
        "e.csv",
        "customer_id,email\nE1,e1@example.com\nE2,not-an-email\n",
    );
    let out = server.segctl(&["load", "customers", &bad_email]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{bad_email}:3: invalid request")), "{err}");

    // An unknown column is refused before anything is sent.
    let unknown = write(dir.path(), "u.csv", "customer_id,shoe_size\nU1,42\n");
    let out = server.segctl(&["load", "customers", &unknown]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("column `shoe_size` is not an attribute"));
    // A date that does not exist is a bad row, reported with its line.
    let dates = write(
        dir.path(),
        "f.csv",
        "customer_id,birth_date,last_visit_at\nF1,1980-02-29,2024-05-01T10:00:00Z\nF2,1981-02-29,\n",
    );
    let out = server.segctl(&["load", "customers", &dates]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{dates}:3: `birth_date`: invalid date 1981-02-29: month 2 of 1981 has 28 days"
        )),
        "{err}"
    );
    assert_eq!(server.stat("customers"), 2);
    let twice = write(dir.path(), "t.csv", "customer_id,city,city\nT1,Lyon,Nice\n");
    let out = server.segctl(&["load", "customers", &twice]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("column `city` appears twice in the header"));
    assert_eq!(server.stat("customers"), 2);
}

#[test]
fn jsonl_members_and_plain_errors() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.jsonl",
        "{\"customer_id\":\"J1\",\"email\":\"j1@example.com\",\"tags\":[\"golf\",\"ski\"],\"household_size\":3}\n\
         {\"customer_id\":\"J2\",\"email\":\"j2@example.com\",\"birth_date\":\"1990-05-06\"}\n\
         {\"customer_id\":\"J3\",\"email\":\"j3@example.com\",\"gender\":\"F\"}\n",
    );
    server.ok(&["load", "customers", &file]);
    let j1 = server.ok(&["customer", "get", "j1@example.com", "--email"]);
    assert!(
        has_row(&j1, "tags golf|ski") && has_row(&j1, "household_size 3"),
        "{j1}"
    );
    // Keys differ from row to row: each value is typed by its own key.
    let j3 = server.ok(&["customer", "get", "J3"]);
    assert!(has_row(&j3, "gender F"), "{j3}");

    server.ok(&["segment", "create", "vip-list"]);
    let members = write(dir.path(), "m.csv", "email\nj2@example.com\nnobody@example.com\n");
    let out = server.segctl(&["load", "members", "vip-list", &members, "--by", "email"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 changed, 0 unchanged, 1 unknown"));
    assert!(has_row(&server.ok(&["check", "J2", "vip-list"]), "vip-list yes"));

    // Errors are the status message in plain words, and the exit code says so.
    let out = server.segctl(&["segment", "get", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "not found");
    assert!(err.starts_with("segctl: segment `nope` not found"), "{err}");
    assert!(!err.contains("Status {"), "{err}");
    let out = server.segctl(&["segment", "create", "broken", "--rule", "age >"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("rule_text"));
    let out = Command::new(env!("CARGO_BIN_EXE_segctl"))
        .args(["stats", "--server", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach segmentd"));
}

#[test]
fn watch_and_history_show_entries_and_exits_and_resume() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.csv",
        "customer_id,email,gender\nW1,w1@example.com,M\nW2,w2@example.com,F\n",
    );
    server.ok(&["load", "customers", &file]);
    server.ok(&["segment", "create", "men", "--rule", "gender = \"M\""]);
    server.ok(&["segment", "create", "golfers", "--allow-activities"]);
    server.ok(&["activity", "add", "golfers", "--activity", "golf-week", "W2"]);
    server.ok(&["customer", "delete", "W1"]);

    let lines = server.ok(&["watch", "--limit", "3"]);
    let rows: Vec<Vec<&str>> = lines.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 3, "{lines}");
    assert_eq!(&rows[0][2..], ["men", "W1", "entered", "rule"]);
    assert_eq!(
        &rows[1][2..],
        ["golfers", "W2", "entered", "activity", "golf-week"]
    );
    assert_eq!(&rows[2][2..], ["men", "W1", "exited", "deletion"]);
    assert!(rows[0][1].ends_with('Z'), "RFC 3339 time: {}", rows[0][1]);

    // Resuming after the first: the rest, nothing twice; JSON lines on request.
    let rest = server.ok(&["watch", "--from", rows[0][0], "--limit", "2", "--format", "jsonl"]);
    let events: Vec<serde_json::Value> = rest.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events[0]["sequence"], 2);
    assert_eq!(events[0]["activity_id"], "golf-week");
    assert_eq!(events[1]["cause"], "deletion");
    let filtered = server.ok(&["watch", "--segment", "golfers", "--limit", "1"]);
    assert!(filtered.contains("\tgolfers\tW2\tentered\t"), "{filtered}");

    let history = server.segctl(&["history", "W1"]);
    let table = String::from_utf8_lossy(&history.stdout);
    assert_eq!(table.lines().count(), 3, "a header and two events: {table}");
    assert!(
        has_row(&table, "sequence time segment_id customer_id event cause"),
        "{table}"
    );
    // Nothing was dropped from this server's history: the footer does not say otherwise.
    assert_eq!(String::from_utf8_lossy(&history.stderr), "2 events\n");
    let events = server.json(&["history", "W1"]);
    assert_eq!(events[0]["segment_id"], "men");
    assert_eq!(events[1]["event"], "exited");
    assert_eq!(events[1]["cause"], "deletion");
    assert!(events[0]["activity_id"].is_null(), "{events}");
    let out = server.segctl(&["watch", "--from", "99"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("out of range"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_watch_ended_by_shutdown_says_once_where_to_resume() {
    let mut server = Server::start();
    server.ok(&["segment", "create", "golfers", "--allow-activities"]);
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "c.csv", "customer_id\nS1\n");
    server.ok(&["load", "customers", &file]);
    server.ok(&["activity", "add", "golfers", "--activity", "a", "S1"]);
    let mut watch = Command::new(env!("CARGO_BIN_EXE_segctl"))
        .args(["watch"])
        .env("SEGMENTD_ADDR", &server.addr)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the watch has printed its event, stop the server.
    let mut stdout = std::io::BufReader::new(watch.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.contains("golfers\tS1\tentered"), "{line}");
    drop(server.stop.take());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(watch.wait().unwrap().code(), Some(1), "{err}");
    assert_eq!(err.matches("resume").count(), 1, "{err}");
    assert!(err.contains("shutting down; resume with --from 1"), "{err}");
}

#[test]
fn families_and_reclassification_from_the_command_line() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let orders = write(
        dir.path(),
        "orders.csv",
        "order_id,customer_id,placed_at,amount\n\
         o1,F1,2026-01-05,20.00\no2,F1,2026-02-05,1500.00\no3,F2,2026-02-01,50.00\no4,F3,2025-06-01,5.00\n",
    );
    server.ok(&["load", "orders", &orders]);
    let created = server.ok(&[
        "family",
        "create",
        "value",
        "--member",
        "value.big=total_spent >= 1000",
        "--member",
        "value.mid=total_spent >= 10",
        "--catch-all",
        "value.small",
    ]);
    assert_eq!(created, "value.big\t1\nvalue.mid\t1\nvalue.small\t1\n");
    let out = server.segctl(&[
        "family",
        "create",
        "bad",
        "--member",
        "no rule here",
        "--catch-all",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SEGMENT_ID=RULE"));

    let scored = server.ok(&["reclassify", "--as-of", "2026-03-01"]);
    assert!(scored.starts_with("3 customers scored"), "{scored}");
    let list = server.ok(&["family", "list"]);
    assert!(
        list.contains("rfm: RFM (built in), reclassified 2026-03-01"),
        "{list}"
    );
    assert!(has_row(&list, "value.big 1 total_spent >= 1000"), "{list}");
    assert!(has_row(&list, "rfm.unscored 0 (catch-all)"), "{list}");
    let families = server.json(&["family", "list"]);
    let value = families
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["family_id"] == "value")
        .unwrap();
    assert_eq!(value["members"][1]["rule"], "total_spent >= 10");
    assert_eq!(value["members"][2]["catch_all"], true);
    assert!(value["members"][2]["rule"].is_null());
    let csv = server.ok(&["family", "list", "-o", "csv"]);
    assert!(
        csv.starts_with("family_id,segment_id,size,rule,catch_all\n"),
        "{csv}"
    );
    assert!(csv.contains("\nvalue,value.small,1,,true\n"), "{csv}");
    let out = server.segctl(&["family", "delete", "rfm"]);
    assert!(!out.status.success());
    server.ok(&["family", "delete", "value"]);
    assert!(!server.ok(&["family", "list"]).contains("value"));
}

#[test]
fn money_in_major_units_in_every_output_and_exports_that_load_back() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(
        dir.path(),
        "tokens",
        "admin admin-token-0123456789\nloader loader-token-0123456789\n",
    );
    let server = Server::start_with(
        |c| c.tokens_file = Some(tokens.into()),
        &["--token", "admin-token-0123456789"],
    );
    let admin = ["--token", "admin-token-0123456789"];
    let loader = ["--token", "loader-token-0123456789"];
    let with = |token: &[&str; 2], args: &[&str]| -> Vec<String> {
        args.iter().chain(token).map(|s| s.to_string()).collect()
    };
    let run = |args: Vec<String>| server.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    server.ok(&with(&admin, &["schema", "define", "credit", "money"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    // A loader's token loads a file (the load reads the attribute types through GetSchema).
    let customers = write(
        dir.path(),
        "c.csv",
        "customer_id,credit,city\nM1,12.50,Lyon\nM2,-0.07,Paris\n",
    );
    let orders = write(
        dir.path(),
        "o.csv",
        "order_id,customer_id,placed_at,amount\no1,M1,2026-01-05,1000.25\n",
    );
    run(with(&loader, &["load", "customers", &customers]));
    run(with(&loader, &["load", "orders", &orders]));

    // customer get: the loader reads major units in every format.
    let table = run(with(&loader, &["customer", "get", "M1"]));
    assert!(
        has_row(&table, "credit 12.50") && has_row(&table, "total_spent 1000.25"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&run(with(&loader, &["customer", "get", "M2", "-o", "json"]))).unwrap();
    assert_eq!(json["credit"], -0.07);
    assert_eq!(json["customer_id"], "M2");
    let csv = run(with(&loader, &["customer", "get", "M1", "-o", "csv"]));
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(
        (at("credit"), at("total_spent"), at("city")),
        ("12.50", "1000.25", "Lyon"),
        "{csv}"
    );

    // An export in major units loads back unchanged.
    run(with(
        &admin,
        &["segment", "create", "all", "--rule", "city is set"],
    ));
    let exported = run(with(
        &admin,
        &["segment", "export", "all", "--fields", "credit,city"],
    ));
    assert!(
        exported.contains("\nM1,,12.50,Lyon\n") && exported.contains("\nM2,,-0.07,Paris\n"),
        "{exported}"
    );
    let jsonl = run(with(
        &admin,
        &[
            "segment", "export", "all", "--fields", "credit", "--format", "jsonl",
        ],
    ));
    assert!(jsonl.contains("\"credit\":12.5"), "{jsonl}");
    let again = write(dir.path(), "again.csv", &exported);
    run(with(&admin, &["load", "customers", &again]));
    let json: serde_json::Value =
        serde_json::from_str(&run(with(&admin, &["customer", "get", "M1", "-o", "json"]))).unwrap();
    assert_eq!(json["credit"], 12.5);

    // Every read command's `-o json` parses, and `-o csv` has a header.
    for args in [
        &["segment", "list"][..],
        &["segment", "get", "all"],
        &["segment", "preview", "credit > 0", "--sample", "1"],
        &["segment", "explain", "M1", "all"],
        &["segment", "overlap", "all", "all"],
        &["check", "M1", "all"],
        &["history", "M1"],
        &["stats"],
        &["info"],
        &["schema", "list"],
        &["family", "list"],
        &["customer", "get", "M1"],
    ] {
        let text = run(with(&admin, &[args, &["-o", "json"][..]].concat()));
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&text);
        assert!(parsed.is_ok(), "{args:?}: {text}");
        let csv = run(with(&admin, &[args, &["-o", "csv"][..]].concat()));
        let header = csv.lines().next().unwrap_or_default();
        assert!(header.contains(',') && !header.contains(' '), "{args:?}: {csv}");
    }
    let preview: serde_json::Value = serde_json::from_str(&run(with(
        &admin,
        &["segment", "preview", "credit > 0", "--sample", "5", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(preview, serde_json::json!({"count": 1, "sample": ["M1"]}));
}

#[test]
fn connection_flags_are_listed_once_and_accepted_anywhere() {
    let server = Server::start();
    let top = server.ok(&["--help"]);
    assert!(top.contains("--server") && top.contains("--tls-ca"), "{top}");
    for sub in [
        &["segment", "list", "--help"][..],
        &["load", "customers", "--help"],
        &["stats", "--help"],
    ] {
        let help = server.ok(sub);
        assert!(
            !help.contains("--server") && !help.contains("--tls-ca"),
            "{sub:?}: {help}"
        );
    }
    // Before or after the subcommand, each flag reaches its own setting.
    let wrong = "http://127.0.0.1:9";
    let env_wrong = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_segctl"))
            .args(args)
            .env("SEGMENTD_ADDR", wrong)
            .output()
            .unwrap()
    };
    for args in [
        &["--server", &server.addr, "stats"][..],
        &["stats", "--server", &server.addr],
        &[
            "stats",
            "--timeout",
            "5",
            "--server",
            &server.addr,
            "--tls-domain",
            "localhost",
        ],
    ] {
        let out = env_wrong(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn tokens_from_the_environment_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(
        dir.path(),
        "tokens",
        "admin admin-token-0123456789\nreader reader-token-0123456789\n",
    );
    let server = Server::start_with(
        |c| c.tokens_file = Some(tokens.into()),
        &["--token", "admin-token-0123456789"],
    );
    let out = server.segctl(&["stats"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not authenticated"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_segctl"))
        .args(["stats"])
        .env("SEGMENTD_ADDR", &server.addr)
        .env("SEGMENTD_TOKEN", "admin-token-0123456789")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.segctl(&["stats", "--token", "reader-token-0123456789"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
}

#[test]
fn tls_with_client_certificates() {
    let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tls");
    let (ca, cert, key) = (
        format!("{tls}/ca.pem"),
        format!("{tls}/client.pem"),
        format!("{tls}/client.key"),
    );
    let with_identity = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let server = Server::start_with(
        |c| {
            c.tls_cert = Some(format!("{tls}/server.pem").into());
            c.tls_key = Some(format!("{tls}/server.key").into());
            c.tls_client_ca = Some(format!("{tls}/ca.pem").into());
        },
        &with_identity,
    );
    let stats: Vec<&str> = ["stats"].iter().chain(&with_identity).copied().collect();
    assert_eq!(server.json(&stats)["customers"], 0);
    // Without a client certificate the handshake is refused; plain text gets no answer, and
    // segctl gives up after its `--timeout` saying so. Either way it exits 1 with a message.
    for args in [
        &["stats", "--tls-ca", &ca, "--timeout", "5"][..],
        &["stats", "--timeout", "5"],
    ] {
        let started = std::time::Instant::now();
        let out = server.segctl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        // Refused at the connection, not answered with a status (which would mean it got in).
        assert!(stderr.contains("transport error"), "{args:?}: {stderr}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{args:?} hung"
        );
    }
}

/// A peer that takes connections and never answers (a stalled server): segctl gives up after
/// `--timeout` with an error saying so, instead of waiting forever.
#[test]
fn a_server_that_never_answers_is_given_up_on() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut reader = conn.try_clone().unwrap();
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            held.push(conn);
        }
    });
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_segctl"))
        .args(["stats", "--timeout", "2"])
        .env("SEGMENTD_ADDR", &addr)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("segctl still waiting after 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let waited = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "gave up after {waited:?}"
    );
    // Connected (TCP, HTTP/2 preface sent), then the call's keep-alive ping went unanswered.
    assert!(stderr.contains("keep-alive timed out"), "{stderr}");
}

#[test]
fn a_closed_pipe_ends_segctl_quietly() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().to_str().unwrap();
    server.ok(&["gen", "--customers", "3000", "--seed", "2", "--out", demo]);
    server.ok(&["load", "customers", &format!("{demo}/customers.csv")]);
    server.ok(&["segment", "create", "all", "--rule", "not vip or vip"]);
    // The reader takes one line and closes the pipe: segctl's next writes fail.
    let mut child = Command::new(env!("CARGO_BIN_EXE_segctl"))
        .args(["segment", "export", "all"])
        .env("SEGMENTD_ADDR", &server.addr)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn schema_completions_man_and_plain_not_found() {
    let server = Server::start();
    let list = server.ok(&["schema", "list"]);
    assert!(has_row(&list, "gender keyword yes no"), "{list}");
    assert!(has_row(&list, "total_spent money yes yes"), "{list}");
    let defined = server.ok(&["schema", "define", "shoe_size", "int", "--description", "EU size"]);
    assert_eq!(defined, "defined shoe_size (int)\n");
    assert!(has_row(
        &server.ok(&["schema", "list"]),
        "shoe_size int no no EU size"
    ));
    let schema = server.json(&["schema", "list"]);
    let shoe = schema
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "shoe_size")
        .unwrap();
    assert_eq!(
        *shoe,
        serde_json::json!({"name": "shoe_size", "type": "int", "builtin": false, "read_only": false, "description": "EU size"})
    );
    let bad = server.segctl(&["schema", "define", "shoe_size", "colour"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");

    // Attributes in name order, every time.
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "c.csv",
        "customer_id,vip,shoe_size,household_size,city\nA1,true,44,3,Lyon\n",
    );
    server.ok(&["load", "customers", &file]);
    let got = server.ok(&["customer", "get", "A1"]);
    let names: Vec<&str> = got
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "{got}");

    // Not found: said once, exit 3.
    let out = server.segctl(&["customer", "get", "nobody"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("not found").count(), 1, "{err}");

    let completions = server.ok(&["completions", "bash"]);
    assert!(
        completions.contains("segctl") && completions.contains("schema"),
        "{completions}"
    );
    assert!(server.ok(&["man"]).starts_with(".ie"), "a roff page");
}

#[test]
fn dry_run_asks_the_server_and_max_errors_skips_what_it_refuses() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let owner = write(
        dir.path(),
        "owner.csv",
        "customer_id,email\nO1,taken@example.com\n",
    );
    server.ok(&["load", "customers", &owner]);
    // Line 3: a cell segctl refuses; line 4: an e-mail only the server knows is taken.
    let file = write(
        dir.path(),
        "c.csv",
        "customer_id,email,household_size\nA1,a1@example.com,2\nA2,,two\nA3,taken@example.com,3\nA4,,4\n",
    );
    let out = server.segctl(&["load", "customers", &file, "--dry-run", "--max-errors", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("{file}:3: `household_size`")), "{err}");
    assert!(
        err.contains(&format!(
            "{file}:4: `email`: `taken@example.com` belongs to another customer (O1)"
        )),
        "{err}"
    );
    assert!(
        err.contains("2 would be created, 0 would be updated") && err.contains("nothing applied"),
        "{err}"
    );
    assert_eq!(server.stat("customers"), 1, "a dry run applies nothing");

    // Applied for real: the two good rows go in, each bad one is reported at its line.
    let out = server.segctl(&["load", "customers", &file, "--max-errors", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("{file}:4: `email`")), "{err}");
    assert!(err.contains("2 bad rows were skipped"), "{err}");
    assert_eq!(server.stat("customers"), 3);
    assert!(server.segctl(&["customer", "get", "A3"]).status.code() == Some(3));

    // Without --max-errors the refused row's batch is not applied and the load stops there,
    // saying which lines were applied.
    let file = write(
        dir.path(),
        "d.csv",
        "customer_id,email\nB1,\nB2,\nB3,\nB4,taken@example.com\nB5,\n",
    );
    let out = server.segctl(&["load", "customers", &file, "--batch-size", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "partly applied: {err}");
    assert!(err.contains(&format!("{file}:5: ")), "{err}");
    assert!(
        err.contains(&format!(
            "{file}: lines up to 3 were applied; none from line 4 on"
        )),
        "{err}"
    );
    assert_eq!(server.stat("customers"), 5, "B1 and B2 only");

    // Orders go a request per batch: those before the refused one stand, and the summary says so.
    let long_id = "o".repeat(200);
    let orders = write(
        dir.path(),
        "o.csv",
        &format!(
            "order_id,customer_id,placed_at,amount\no1,B1,2026-01-05,1.00\n{long_id},B1,2026-01-06,2.00\n"
        ),
    );
    let out = server.segctl(&["load", "orders", &orders, "--batch-size", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "partly applied: {err}");
    assert!(
        err.contains(&format!(
            "{orders}: lines up to 2 were applied; none from line 3 on"
        )),
        "{err}"
    );
}
