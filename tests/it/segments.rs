//! Segments, Membership and Activities against a real server.

use crate::common::*;
use segmentd::api::pb;
use tonic::Code;

/// A server whose clock stands at 2026-12-01 00:00 UTC: the ages these tests expect (ann 36, bob
/// 56, cat 66) do not move with the calendar.
async fn server_on_a_fixed_date() -> TestServer {
    let day = segmentd::time::days_from_civil(2026, 12, 1).unwrap();
    let micros = i64::from(day) * 86_400 * 1_000_000;
    let clock = std::sync::Arc::new(segmentd::time::ManualClock::new(micros));
    TestServer::start_with(move |c| c.clock = Some(clock)).await
}

/// Six customers covering every attribute type.
async fn base(server: &TestServer) {
    upsert(
        server,
        vec![
            customer(
                "ann",
                Some("ann@example.com"),
                &[
                    ("registered", b(true)),
                    ("gender", s("F")),
                    ("birth_date", date(1990, 3, 10)),
                    ("city", s("Lyon")),
                    ("tags", list(&["golf", "ski"])),
                    ("household_size", i(2)),
                    ("account_id", s("ACME")),
                    ("registered_at", ts(1_600_000_000)),
                ],
            ),
            customer(
                "bob",
                Some("bob@example.com"),
                &[
                    ("registered", b(true)),
                    ("gender", s("M")),
                    ("birth_date", date(1970, 7, 1)),
                    ("city", s("Paris")),
                    ("tags", list(&["golf"])),
                    ("household_size", i(4)),
                    ("vip", b(true)),
                ],
            ),
            customer(
                "cat",
                None,
                &[
                    ("registered", b(false)),
                    ("gender", s("F")),
                    ("birth_date", date(1960, 1, 1)),
                    ("city", s("lille")),
                ],
            ),
            customer(
                "dan",
                None,
                &[("gender", s("M")), ("city", s("Lyon")), ("account_id", s("ACME"))],
            ),
            customer("eve", None, &[("vip", b(false)), ("tags", list(&["tennis"]))]),
            customer("fay", Some("fay@example.com"), &[]),
        ],
    )
    .await;
}

async fn members(server: &TestServer, rule: &str) -> Vec<String> {
    let r = server
        .segments()
        .await
        .preview_segment(pb::PreviewSegmentRequest {
            rule_text: rule.into(),
            sample_size: 100,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{rule}: {}", e.message()))
        .into_inner();
    let mut ids = r.sample_customer_ids;
    ids.sort();
    assert_eq!(ids.len() as u64, r.count, "{rule}");
    ids
}

#[tokio::test]
async fn every_predicate_kind() {
    let server = server_on_a_fixed_date().await;
    base(&server).await;
    let cases: &[(&str, &[&str])] = &[
        ("registered", &["ann", "bob"]),
        ("registered = false", &["cat"]),
        ("vip != true", &["eve"]),
        (r#"gender = "F""#, &["ann", "cat"]),
        (r#"gender != "F""#, &["bob", "dan"]),
        (r#"city in ("Lyon", "Paris")"#, &["ann", "bob", "dan"]),
        (r#"city not in ("Lyon")"#, &["bob", "cat"]),
        (r#"city starts_with "l""#, &["cat"]),
        (r#"city starts_with "l" ignore_case"#, &["ann", "cat", "dan"]),
        (r#"city ends_with "is""#, &["bob"]),
        (r#"city contains "YO" ignore_case"#, &["ann", "dan"]),
        ("household_size > 2", &["bob"]),
        ("household_size <= 2", &["ann"]),
        ("household_size between 2 and 4", &["ann", "bob"]),
        ("household_size in (4, 5)", &["bob"]),
        ("birth_date < 1975-01-01", &["bob", "cat"]),
        ("birth_date between 1965-01-01 and 1995-12-31", &["ann", "bob"]),
        ("registered_at >= 2020-09-13T12:26:40Z", &["ann"]),
        ("registered_at < 2020-01-01", &[]),
        ("city is set", &["ann", "bob", "cat", "dan"]),
        ("city is not set", &["eve", "fay"]),
        (r#"tags has_any ("ski", "tennis")"#, &["ann", "eve"]),
        (r#"tags has_all ("golf", "ski")"#, &["ann"]),
        ("age > 40", &["bob", "cat"]),
        ("age between 30 and 60", &["ann", "bob"]),
        ("not age > 40", &["ann", "dan", "eve", "fay"]),
        (r#"registered and gender = "M" and age > 40"#, &["bob"]),
        (r#"(gender = "F" or vip) and not city = "lille""#, &["ann", "bob"]),
        ("registered_at within 36500d", &["ann"]),
    ];
    for (rule, want) in cases {
        assert_eq!(members(&server, rule).await, *want, "{rule}");
    }
}

#[tokio::test]
async fn segments_are_materialized_and_read_your_writes() {
    let server = server_on_a_fixed_date().await;
    base(&server).await;
    let seg = create(
        &server,
        text_segment("men_over_40", r#"registered and gender = "M" and age > 40"#),
    )
    .await
    .unwrap();
    assert_eq!(seg.size, 1);
    assert!(seg.rule.is_some(), "the tree spelling is returned too");
    assert_eq!(seg.rule_text, r#"registered and gender = "M" and age > 40"#);
    assert_eq!(is_member(&server, "bob", "men_over_40").await, (true, true));
    assert_eq!(is_member(&server, "dan", "men_over_40").await, (false, true));
    assert_eq!(is_member(&server, "nobody", "men_over_40").await, (false, false));

    // Upsert: dan becomes registered and older.
    upsert(
        &server,
        vec![customer(
            "dan",
            None,
            &[("registered", b(true)), ("birth_date", date(1950, 1, 1))],
        )],
    )
    .await;
    assert_eq!(is_member(&server, "dan", "men_over_40").await, (true, true));
    // A new customer is evaluated at once.
    upsert(
        &server,
        vec![customer(
            "gus",
            None,
            &[
                ("registered", b(true)),
                ("gender", s("M")),
                ("birth_date", date(1940, 1, 1)),
            ],
        )],
    )
    .await;
    assert_eq!(is_member(&server, "gus", "men_over_40").await, (true, true));
    assert_eq!(size(&server, "men_over_40").await, 3);
    // Delete.
    server
        .ingest()
        .await
        .delete_customer(delete_id("gus"))
        .await
        .unwrap();
    assert_eq!(is_member(&server, "gus", "men_over_40").await, (false, false));
    assert_eq!(size(&server, "men_over_40").await, 2);

    // Orders: "good customers" spent over 1000 (money literals are major units).
    create(&server, text_segment("good", "total_spent >= 1000"))
        .await
        .unwrap();
    let mut ingest = server.ingest().await;
    ingest
        .record_orders(pb::RecordOrdersRequest {
            orders: vec![order("o1", "ann", 1_700_000_000, 60_000, false, &["golf"])],
        })
        .await
        .unwrap();
    assert_eq!(
        is_member(&server, "ann", "good").await,
        (false, true),
        "600 is not yet 1000"
    );
    ingest
        .record_orders(pb::RecordOrdersRequest {
            orders: vec![order("o2", "ann", 1_700_000_100, 40_000, false, &[])],
        })
        .await
        .unwrap();
    assert_eq!(
        is_member(&server, "ann", "good").await,
        (true, true),
        "600 + 400 >= 1000"
    );

    // Memberships in bulk.
    let mut m = server.membership().await;
    let r = m
        .check_memberships(pb::CheckMembershipsRequest {
            customer_id: "bob".into(),
            segment_ids: vec!["good".into(), "men_over_40".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.member, r.known_customer), (vec![false, true], true));
    let r = m
        .get_customer_segments(pb::GetCustomerSegmentsRequest {
            customer_id: "ann".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.segment_ids, r.known_customer),
        (vec!["good".to_string()], true)
    );
    let r = m
        .get_customer_segments(pb::GetCustomerSegmentsRequest {
            customer_id: "ghost".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.segment_ids.len(), r.known_customer), (0, false));

    // Unknown segments are NOT_FOUND; bad ids INVALID_ARGUMENT.
    let err = m
        .is_member(pb::IsMemberRequest {
            customer_id: "ann".into(),
            segment_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = m
        .check_memberships(pb::CheckMembershipsRequest {
            customer_id: "ann".into(),
            segment_ids: vec!["good".into(), "bad id!".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("segment_ids[1]"), "{}", err.message());
    let err = m
        .is_member(pb::IsMemberRequest {
            customer_id: "".into(),
            segment_id: "good".into(),
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("customer_id"), "{}", err.message());
}

#[tokio::test]
async fn lists_override_the_rule_by_customer_and_by_account() {
    let server = TestServer::start().await;
    base(&server).await;
    let mut seg = text_segment("lyon", r#"city = "Lyon""#);
    seg.include_customer_ids = vec!["eve".into()];
    seg.exclude_customer_ids = vec!["ann".into()];
    let seg = create(&server, seg).await.unwrap();
    assert_eq!(
        (
            seg.size,
            seg.include_customer_ids.clone(),
            seg.exclude_customer_ids.clone()
        ),
        (2, vec!["eve".to_string()], vec!["ann".to_string()])
    );
    assert!(
        !is_member(&server, "ann", "lyon").await.0,
        "excluded beats the rule"
    );
    assert!(is_member(&server, "dan", "lyon").await.0);
    assert!(
        is_member(&server, "eve", "lyon").await.0,
        "included without matching"
    );

    // Accounts: every customer of ACME is in, whatever the rule.
    let mut acct = text_segment("b2b", "vip");
    acct.include_account_ids = vec!["ACME".into()];
    acct.exclude_customer_ids = vec!["dan".into()];
    let acct = create(&server, acct).await.unwrap();
    assert_eq!(acct.size, 2, "ann by account, bob by rule, dan excluded");
    assert!(is_member(&server, "ann", "b2b").await.0);
    // A customer joining the account joins the segment.
    upsert(&server, vec![customer("fay", None, &[("account_id", s("ACME"))])]).await;
    assert!(is_member(&server, "fay", "b2b").await.0);
    // Excluded accounts beat included customers.
    let mut ex = text_segment("not_acme", "registered or vip is set");
    ex.exclude_account_ids = vec!["ACME".into()];
    ex.include_customer_ids = vec!["dan".into()];
    let ex = create(&server, ex).await.unwrap();
    assert!(!is_member(&server, "ann", "not_acme").await.0 && !is_member(&server, "dan", "not_acme").await.0);
    assert_eq!(ex.size, 2, "bob and eve");

    // An unknown customer in a list refuses the definition, naming the item.
    let mut bad = text_segment("bad", "vip");
    bad.include_customer_ids = vec!["ann".into(), "ghost".into()];
    let err = create(&server, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("segment.include_customer_ids[1]"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn activities_are_gated_idempotent_and_report_unknowns() {
    let server = TestServer::start().await;
    base(&server).await;
    let mut golfers = text_segment("golfers", "");
    golfers.allow_activities = true;
    assert_eq!(
        create(&server, golfers).await.unwrap().size,
        0,
        "a container starts empty"
    );
    create(&server, text_segment("locked", "")).await.unwrap();
    let mut act = server.activities().await;
    let add = |seg: &str, ids: &[&str], emails: &[&str]| pb::AddToSegmentRequest {
        segment_id: seg.into(),
        customer_ids: ids.iter().map(|s| s.to_string()).collect(),
        emails: emails.iter().map(|s| s.to_string()).collect(),
        activity_id: "web-42".into(),
    };
    let r = act
        .add_to_segment(add(
            "golfers",
            &["ann", "ghost"],
            &["BOB@example.com", "no@example.com"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.changed, r.unchanged), (2, 0));
    assert_eq!(r.unknown, vec!["ghost".to_string(), "no@example.com".to_string()]);
    assert!(is_member(&server, "ann", "golfers").await.0 && is_member(&server, "bob", "golfers").await.0);
    let again = act
        .add_to_segment(add("golfers", &["ann"], &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.changed, again.unchanged), (0, 1), "idempotent");

    let r = act
        .remove_from_segment(pb::RemoveFromSegmentRequest {
            segment_id: "golfers".into(),
            customer_ids: vec!["ann".into()],
            emails: vec![],
            activity_id: "web-43".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.changed, 1);
    assert!(!is_member(&server, "ann", "golfers").await.0);
    let explained = server
        .segments()
        .await
        .explain_membership(pb::ExplainMembershipRequest {
            customer_id: "ann".into(),
            segment_id: "golfers".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.decided_by, pb::Decision::ExcludedByActivity as i32);

    let err = act
        .add_to_segment(add("locked", &["ann"], &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(!is_member(&server, "ann", "locked").await.0);
    let err = act
        .add_to_segment(add("missing", &["ann"], &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut no_activity = add("golfers", &["ann"], &[]);
    no_activity.activity_id.clear();
    assert_eq!(
        act.add_to_segment(no_activity).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let err = act
        .add_to_segment(add("golfers", &[], &["not-an-email"]))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("emails[0]"), "{}", err.message());

    // The member load path is not gated and works by e-mail.
    let reply = server
        .ingest()
        .await
        .load_segment_members(tokio_stream::iter(vec![
            pb::LoadSegmentMembersRequest {
                segment_id: "locked".into(),
                emails: vec!["fay@example.com".into(), "nobody@example.com".into()],
                customer_ids: vec!["cat".into()],
                mode: pb::MemberMode::Include as i32,
            },
            pb::LoadSegmentMembersRequest {
                segment_id: "locked".into(),
                emails: vec![],
                customer_ids: vec!["cat".into()],
                mode: pb::MemberMode::Exclude as i32,
            },
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.changed, reply.unknown_count, reply.batches), (3, 1, 2));
    assert!(is_member(&server, "fay", "locked").await.0 && !is_member(&server, "cat", "locked").await.0);
    let err = server
        .ingest()
        .await
        .load_segment_members(tokio_stream::iter(vec![
            pb::LoadSegmentMembersRequest {
                segment_id: "locked".into(),
                emails: vec![],
                customer_ids: vec!["dan".into()],
                mode: pb::MemberMode::Include as i32,
            },
            pb::LoadSegmentMembersRequest {
                segment_id: "locked".into(),
                mode: 0,
                ..Default::default()
            },
        ]))
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("batch[1].mode") && err.message().contains("1 earlier batches"),
        "{}",
        err.message()
    );
    assert!(
        is_member(&server, "dan", "locked").await.0,
        "the batch before the bad one stays"
    );
}

#[tokio::test]
async fn in_segment_chains_cycles_and_deletion() {
    let server = TestServer::start().await;
    base(&server).await;
    create(&server, text_segment("golf", r#"tags has_any ("golf")"#))
        .await
        .unwrap();
    create(
        &server,
        text_segment("golf_women", r#"in segment "golf" and gender = "F""#),
    )
    .await
    .unwrap();
    create(
        &server,
        text_segment("golf_women_lyon", r#"in segment "golf_women" and city = "Lyon""#),
    )
    .await
    .unwrap();
    assert_eq!(size(&server, "golf_women_lyon").await, 1);
    // A write that changes the base segment flows down the chain.
    upsert(
        &server,
        vec![customer(
            "dan",
            None,
            &[("tags", list(&["golf"])), ("gender", s("F"))],
        )],
    )
    .await;
    assert!(is_member(&server, "dan", "golf_women_lyon").await.0);
    // Changing the base rule re-evaluates its readers.
    let mut seg = server.segments().await;
    seg.update_segment(pb::UpdateSegmentRequest {
        segment: Some(text_segment("golf", r#"tags has_any ("ski")"#)),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["rule_text".into()],
        }),
    })
    .await
    .unwrap();
    assert!(!is_member(&server, "dan", "golf_women_lyon").await.0);
    assert!(is_member(&server, "ann", "golf_women_lyon").await.0);

    // Cycles are refused and change nothing.
    let err = seg
        .update_segment(pb::UpdateSegmentRequest {
            segment: Some(text_segment("golf", r#"in segment "golf_women_lyon""#)),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["rule".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("cycle: golf -> golf_women_lyon -> golf_women -> golf"),
        "{}",
        err.message()
    );
    let got = seg
        .get_segment(pb::GetSegmentRequest {
            segment_id: "golf".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.rule_text, r#"tags has_any ("ski")"#);
    let err = create(&server, text_segment("selfish", r#"in segment "selfish""#))
        .await
        .unwrap_err();
    assert!(err.message().contains("no such segment"), "{}", err.message());

    // A segment read by others cannot be deleted.
    let err = seg
        .delete_segment(pb::DeleteSegmentRequest {
            segment_id: "golf".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("golf_women"), "{}", err.message());
    seg.delete_segment(pb::DeleteSegmentRequest {
        segment_id: "golf_women_lyon".into(),
    })
    .await
    .unwrap();
    seg.delete_segment(pb::DeleteSegmentRequest {
        segment_id: "golf_women".into(),
    })
    .await
    .unwrap();
    seg.delete_segment(pb::DeleteSegmentRequest {
        segment_id: "golf".into(),
    })
    .await
    .unwrap();
    let err = seg
        .get_segment(pb::GetSegmentRequest {
            segment_id: "golf".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The slot is reused cleanly.
    create(&server, text_segment("fresh", "vip")).await.unwrap();
    assert_eq!(size(&server, "fresh").await, 1);
    let list = seg
        .list_segments(pb::ListSegmentsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.segments
            .iter()
            .map(|s| s.segment_id.as_str())
            .collect::<Vec<_>>(),
        vec!["fresh"]
    );
}

#[tokio::test]
async fn bad_rules_are_refused_with_positions_and_names() {
    let server = TestServer::start().await;
    base(&server).await;
    for (rule, code, needle) in [
        (
            "registered and\n  (age > ",
            Code::InvalidArgument,
            "segment.rule_text: line 2, column 10",
        ),
        (r#"age = "old""#, Code::InvalidArgument, "`age`"),
        (
            r#"shoe_size = 42"#,
            Code::InvalidArgument,
            "`shoe_size`: unknown attribute",
        ),
        (r#"in segment "nope""#, Code::InvalidArgument, "no such segment"),
    ] {
        let err = create(&server, text_segment("x", rule)).await.unwrap_err();
        assert_eq!(err.code(), code, "{rule}");
        assert!(err.message().contains(needle), "{rule}: {}", err.message());
    }
    let mut both = text_segment("x", "vip");
    both.rule = Some(pb::Rule { node: None });
    assert_eq!(
        create(&server, both).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let err = create(&server, text_segment("bad id!", "vip")).await.unwrap_err();
    assert!(
        err.message().starts_with("segment.segment_id"),
        "{}",
        err.message()
    );
    create(&server, text_segment("x", "vip")).await.unwrap();
    assert_eq!(
        create(&server, text_segment("x", "vip"))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    let stats = stats(&server).await;
    assert_eq!(stats.segments, 1, "nothing refused was saved");
}

#[tokio::test]
async fn tree_spelling_preview_explain_overlap_export() {
    let server = server_on_a_fixed_date().await;
    base(&server).await;
    // A segment created from the tree comes back with its text.
    let tree = pb::Rule {
        node: Some(pb::rule::Node::And(pb::RuleList {
            rules: vec![
                pb::Rule {
                    node: Some(pb::rule::Node::Predicate(pb::Predicate {
                        attribute: "gender".into(),
                        operator: pb::Operator::Eq as i32,
                        values: vec![s("F")],
                        ..Default::default()
                    })),
                },
                pb::Rule {
                    node: Some(pb::rule::Node::Predicate(pb::Predicate {
                        attribute: "age".into(),
                        operator: pb::Operator::Lt as i32,
                        values: vec![i(40)],
                        ..Default::default()
                    })),
                },
            ],
        })),
    };
    let seg = create(
        &server,
        pb::Segment {
            segment_id: "young_women".into(),
            name: "Young women".into(),
            rule: Some(tree),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(seg.rule_text, r#"gender = "F" and age < 40"#);
    assert_eq!(seg.size, 1);

    // Preview with as_of: in 2100 ann is over 40.
    let mut segs = server.segments().await;
    let p = segs
        .preview_segment(pb::PreviewSegmentRequest {
            rule_text: "age < 40".into(),
            as_of: Some(prost_types::Timestamp {
                seconds: 4_102_444_800,
                nanos: 0,
            }),
            sample_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.count, 0);
    let err = segs
        .preview_segment(pb::PreviewSegmentRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Explain.
    let x = segs
        .explain_membership(pb::ExplainMembershipRequest {
            customer_id: "cat".into(),
            segment_id: "young_women".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!x.member && !x.rule_matched);
    assert_eq!(x.decided_by, pb::Decision::NoMatch as i32);
    assert_eq!(x.predicates.len(), 2);
    assert_eq!(
        (
            x.predicates[0].predicate.as_str(),
            x.predicates[0].value.as_str(),
            x.predicates[0].held
        ),
        (r#"gender = "F""#, "\"F\"", true)
    );
    assert_eq!(
        (
            x.predicates[1].attribute.as_str(),
            x.predicates[1].value.as_str(),
            x.predicates[1].held
        ),
        ("age", "birth_date = 1960-01-01", false)
    );
    let err = segs
        .explain_membership(pb::ExplainMembershipRequest {
            customer_id: "ghost".into(),
            segment_id: "young_women".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Overlap.
    create(&server, text_segment("women", r#"gender = "F""#))
        .await
        .unwrap();
    create(&server, text_segment("golf", r#"tags has_any ("golf")"#))
        .await
        .unwrap();
    let o = segs
        .segment_overlap(pb::SegmentOverlapRequest {
            segment_ids: vec!["women".into(), "golf".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let counts: Vec<_> = o
        .overlaps
        .iter()
        .map(|o| (o.segment_a.as_str(), o.segment_b.as_str(), o.count))
        .collect();
    assert_eq!(
        counts,
        vec![("women", "women", 2), ("women", "golf", 1), ("golf", "golf", 2)]
    );

    // Export in batches of 1 with chosen fields.
    let mut stream = segs
        .export_segment(pb::ExportSegmentRequest {
            segment_id: "golf".into(),
            fields: vec!["city".into()],
            batch_size: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let mut rows = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        assert_eq!(batch.customers.len(), 1);
        rows.extend(batch.customers);
    }
    let got: Vec<_> = rows
        .iter()
        .map(|c| {
            (
                c.customer_id.as_str(),
                c.email.as_deref(),
                c.attributes.get("city").cloned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("ann", Some("ann@example.com"), Some(s("Lyon"))),
            ("bob", Some("bob@example.com"), Some(s("Paris")))
        ]
    );
    let err = segs
        .export_segment(pb::ExportSegmentRequest {
            segment_id: "golf".into(),
            fields: vec!["nope".into()],
            batch_size: 0,
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("fields[0]"), "{}", err.message());
    let err = segs
        .export_segment(pb::ExportSegmentRequest {
            segment_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn batch_checks_answer_every_customer_against_every_segment() {
    let server = TestServer::start().await;
    upsert(
        &server,
        vec![
            customer("b1", None, &[("gender", s("M")), ("vip", b(true))]),
            customer("b2", None, &[("gender", s("F"))]),
        ],
    )
    .await;
    create(&server, text_segment("men", r#"gender = "M""#))
        .await
        .unwrap();
    create(&server, text_segment("vips", "vip")).await.unwrap();
    let mut membership = server.membership().await;
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let r = membership
        .batch_check_memberships(pb::BatchCheckMembershipsRequest {
            customer_ids: ids(&["b1", "nobody", "b2"]),
            segment_ids: ids(&["men", "vips"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.member, vec![true, true, false, false, false, false]);
    assert_eq!(r.known_customer, vec![true, false, true]);
    let err = membership
        .batch_check_memberships(pb::BatchCheckMembershipsRequest {
            customer_ids: ids(&["b1"]),
            segment_ids: ids(&["men", "nope"]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = membership
        .batch_check_memberships(pb::BatchCheckMembershipsRequest {
            customer_ids: (0..10_001).map(|i| format!("c{i}")).collect(),
            segment_ids: ids(&["men"]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("customer_ids"), "{}", err.message());
    let err = membership
        .batch_check_memberships(pb::BatchCheckMembershipsRequest {
            customer_ids: ids(&["b1", ""]),
            segment_ids: ids(&["men"]),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("customer_ids[1]"), "{}", err.message());
}

#[tokio::test]
async fn oversized_and_too_deep_inputs_are_refused_with_their_codes() {
    // A small message limit, so an oversized request is cheap to build.
    let server = TestServer::start_with(|c| c.max_message_bytes = 256 * 1024).await;
    base(&server).await;
    let nested = |levels: usize| format!("{}vip{}", "(".repeat(levels), ")".repeat(levels));
    let many = vec!["vip"; 1001].join(" or ");
    let long = format!("vip or gender in ({})", vec!["\"F\""; 4000].join(", "));
    for (rule, needle) in [
        (nested(40), "nested deeper than 32 levels"),
        (many, "more than 1000"),
        (long, "longer than 16384 bytes"),
    ] {
        let err = create(&server, text_segment("x", &rule)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(needle), "{}", err.message());
    }
    // The tree form has the same limits.
    let mut tree = pb::Rule {
        node: Some(pb::rule::Node::Predicate(pb::Predicate {
            attribute: "vip".into(),
            operator: pb::Operator::IsSet as i32,
            ..Default::default()
        })),
    };
    for _ in 0..40 {
        tree = pb::Rule {
            node: Some(pb::rule::Node::Not(Box::new(tree))),
        };
    }
    let err = create(
        &server,
        pb::Segment {
            segment_id: "x".into(),
            name: "x".into(),
            rule: Some(tree),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("nested deeper than 32 levels"),
        "{}",
        err.message()
    );

    // A message over --max-message-bytes is refused before it is read; the server goes on.
    let mut ingest = server.ingest().await;
    let big: Vec<pb::Customer> = (0..2000)
        .map(|n| customer(&format!("big{n}"), None, &[("organization", s(&"x".repeat(200)))]))
        .collect();
    let err = ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(big))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("the limit is: 262144 bytes"),
        "{}",
        err.message()
    );
    assert_eq!(get(&mut ingest, "big0").await.unwrap_err().code(), Code::NotFound);
    ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
            "small",
            None,
            &[],
        )]))
        .await
        .unwrap();
    assert!(
        server
            .segments()
            .await
            .get_segment(pb::GetSegmentRequest {
                segment_id: "x".into()
            })
            .await
            .is_err()
    );
}

/// An export whose reader stops reading ends after the stall limit with ABORTED saying how many
/// customers were sent, instead of holding its stream open for as long as the client likes.
#[tokio::test]
async fn an_export_nobody_reads_ends_after_the_stall_limit() {
    let server = TestServer::start_with(|c| c.watch_stall_secs = 1).await;
    define_text(&server, "notes").await;
    // 1,000 customers of 4 KB each: more than the stream's HTTP/2 window (2 MiB) can hold.
    let notes = "n".repeat(4000);
    for chunk in 0..10 {
        upsert(
            &server,
            (0..100)
                .map(|k| customer(&format!("c{chunk}-{k:03}"), None, &[("notes", s(&notes))]))
                .collect(),
        )
        .await;
    }
    create(&server, text_segment("all", "notes is set"))
        .await
        .unwrap();
    let mut stream = server
        .segments()
        .await
        .export_segment(pb::ExportSegmentRequest {
            segment_id: "all".into(),
            fields: vec!["notes".into()],
            batch_size: 10,
        })
        .await
        .unwrap()
        .into_inner();
    // Read nothing past the stall limit, then everything there is.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(batch)) => received += batch.customers.len(),
            Ok(None) => panic!("the export ran to its end ({received} customers) for a reader that stalled"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{}", status.message());
    assert!(
        status
            .message()
            .contains(&format!("{received} customers were sent")),
        "{received}: {}",
        status.message()
    );
    assert!(received > 0 && received < 1000, "{received}");
}
