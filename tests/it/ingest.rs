//! The Ingest and Admin services against a real server.

use crate::common::*;
use segmentd::api::pb::{self, value::Kind};
use tonic::Code;

#[tokio::test]
async fn upsert_then_read_back_by_id_and_email() {
    let server = TestServer::start().await;
    let mut ingest = server.ingest().await;
    let reply = ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![
            customer(
                "C1",
                Some("Ann.Lee@Example.com"),
                &[
                    ("registered", b(true)),
                    ("registered_at", ts(1_600_000_000)),
                    ("gender", s("F")),
                    ("birth_date", date(1980, 2, 29)),
                    ("household_size", i(3)),
                    ("tags", list(&["golf", "ski", "golf"])),
                    ("city", s("Lyon")),
                ],
            ),
            customer("C2", None, &[("gender", s("M"))]),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.created, reply.updated), (2, 0));

    let c1 = get(&mut ingest, "C1").await.unwrap();
    assert_eq!(c1.email.as_deref(), Some("Ann.Lee@Example.com"));
    assert_eq!(c1.attributes["gender"], s("F"));
    assert_eq!(c1.attributes["birth_date"], date(1980, 2, 29));
    assert_eq!(c1.attributes["registered_at"], ts(1_600_000_000));
    assert_eq!(c1.attributes["household_size"], i(3));
    assert_eq!(
        c1.attributes["tags"],
        list(&["golf", "ski"]),
        "a set: sorted, no duplicates"
    );
    assert_eq!(c1.attributes.len(), 7);

    // E-mails compare case-insensitively.
    let by_mail = ingest
        .get_customer(by_email("ann.lee@example.COM"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_mail.customer.unwrap().customer_id, "C1");

    // Merge: named attributes change, others stay; an empty Value clears.
    let reply = ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
            "C1",
            None,
            &[("city", s("Paris")), ("tags", clear())],
        )]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.created, reply.updated), (0, 1));
    let c1 = get(&mut ingest, "C1").await.unwrap();
    assert_eq!(c1.attributes["city"], s("Paris"));
    assert!(!c1.attributes.contains_key("tags"));
    assert_eq!(c1.attributes["gender"], s("F"));
    assert_eq!(
        c1.email.as_deref(),
        Some("Ann.Lee@Example.com"),
        "absent e-mail keeps it"
    );

    // "" removes the e-mail, which then no longer finds the customer.
    ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
            "C1",
            Some(""),
            &[],
        )]))
        .await
        .unwrap();
    assert_eq!(get(&mut ingest, "C1").await.unwrap().email, None);
    let err = ingest
        .get_customer(by_email("ann.lee@example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn one_batch_can_move_an_email_between_customers() {
    let server = TestServer::start().await;
    let mut ingest = server.ingest().await;
    ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
            "A",
            Some("shared@example.com"),
            &[],
        )]))
        .await
        .unwrap();
    ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![
            customer("B", Some("shared@example.com"), &[]),
            customer("A", Some("a@example.com"), &[]),
        ]))
        .await
        .unwrap();
    let owner = ingest
        .get_customer(by_email("shared@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(owner.customer.unwrap().customer_id, "B");
    let a = ingest
        .get_customer(by_email("a@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.customer.unwrap().customer_id, "A");
}

#[tokio::test]
async fn delete_erases_and_frees_the_email() {
    let server = TestServer::start().await;
    let mut ingest = server.ingest().await;
    ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
            "gone",
            Some("reuse@example.com"),
            &[("gender", s("F"))],
        )]))
        .await
        .unwrap();
    let reply = ingest
        .delete_customer(delete_id("gone"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.customer_id, "gone");
    assert_eq!(get(&mut ingest, "gone").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        ingest
            .get_customer(by_email("reuse@example.com"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(customer_count(&server).await, 0);

    // The e-mail is free again; the new customer starts with no attributes of the old one
    // even though it takes the erased customer's ordinal.
    ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
            "new",
            Some("REUSE@example.com"),
            &[],
        )]))
        .await
        .unwrap();
    let fresh = get(&mut ingest, "new").await.unwrap();
    assert!(fresh.attributes.is_empty(), "{:?}", fresh.attributes);
    assert_eq!(
        ingest
            .delete_customer(delete_id("gone"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let by_mail = pb::DeleteCustomerRequest {
        key: Some(pb::delete_customer_request::Key::Email(
            "reuse@EXAMPLE.com".into(),
        )),
    };
    assert_eq!(
        ingest
            .delete_customer(by_mail)
            .await
            .unwrap()
            .into_inner()
            .customer_id,
        "new"
    );
    assert_eq!(customer_count(&server).await, 0);
}

#[tokio::test]
async fn orders_maintain_aggregates_once_per_order_id() {
    let server = TestServer::start().await;
    let mut ingest = server.ingest().await;
    ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer("C1", None, &[])]))
        .await
        .unwrap();
    let orders = vec![
        order("o1", "C1", 1_700_000_000, 10_000, false, &["golf"]),
        order("o2", "C1", 1_600_000_000, 5_000, true, &["ski", "golf"]),
        order("o1", "C1", 1_700_000_000, 10_000, false, &["golf"]), // repeated in the request
        order("o3", "NEW", 1_650_000_000, 2_500, true, &["tennis"]), // unknown customer
    ];
    let reply = ingest
        .record_orders(pb::RecordOrdersRequest {
            orders: orders.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.applied, reply.duplicates), (3, 1));
    assert_eq!(reply.created_customer_ids, vec!["NEW".to_string()]);

    let c1 = get(&mut ingest, "C1").await.unwrap();
    assert_eq!(c1.attributes["order_count"], i(2));
    assert_eq!(c1.attributes["total_spent"], i(15_000));
    assert_eq!(c1.attributes["avg_order_value"], i(7_500));
    assert_eq!(c1.attributes["promo_order_count"], i(1));
    assert_eq!(c1.attributes["first_order_at"], ts(1_600_000_000));
    assert_eq!(c1.attributes["last_order_at"], ts(1_700_000_000));
    assert_eq!(c1.attributes["categories_bought"], list(&["golf", "ski"]));
    let new = get(&mut ingest, "NEW").await.unwrap();
    assert_eq!(new.attributes["total_spent"], i(2_500));

    // A retried request counts nothing twice.
    let retry = ingest
        .record_orders(pb::RecordOrdersRequest { orders })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retry.applied, retry.duplicates), (0, 4));
    assert!(retry.created_customer_ids.is_empty());
    assert_eq!(
        get(&mut ingest, "C1").await.unwrap().attributes["total_spent"],
        i(15_000)
    );

    // Purchase aggregates are read-only on upsert.
    let err = ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
            "C1",
            None,
            &[("total_spent", i(1))],
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("customers[0].attributes[\"total_spent\"]"),
        "{}",
        err.message()
    );

    // A bad order refuses the whole request.
    let mut bad = order("o9", "C1", 1_700_000_000, -5, false, &[]);
    bad.amount_minor = -5;
    let err = ingest
        .record_orders(pb::RecordOrdersRequest {
            orders: vec![order("o8", "C1", 1_700_000_000, 100, false, &[]), bad],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("orders[1].amount_minor"),
        "{}",
        err.message()
    );
    assert_eq!(
        get(&mut ingest, "C1").await.unwrap().attributes["order_count"],
        i(2)
    );
    let mut no_time = order("o10", "C1", 0, 1, false, &[]);
    no_time.placed_at = None;
    let err = ingest
        .record_orders(pb::RecordOrdersRequest {
            orders: vec![no_time],
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("orders[0].placed_at"), "{}", err.message());
}

#[tokio::test]
async fn custom_attributes_are_defined_at_run_time() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let mut ingest = server.ingest().await;
    let defined = admin
        .define_attribute(pb::DefineAttributeRequest {
            name: "golf_handicap".into(),
            r#type: pb::AttributeType::Float as i32,
            description: "Handicap index".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .attribute
        .unwrap();
    assert!(!defined.builtin);
    let schema = admin
        .get_schema(pb::GetSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = schema.attributes.iter().map(|a| a.name.as_str()).collect();
    assert!(names.contains(&"golf_handicap") && names.contains(&"total_spent") && names.contains(&"gender"));
    let total = schema
        .attributes
        .iter()
        .find(|a| a.name == "total_spent")
        .unwrap();
    assert_eq!(total.r#type, pb::AttributeType::Money as i32);
    assert!(total.builtin && total.read_only);

    ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
            "G",
            None,
            &[("golf_handicap", f(12.4))],
        )]))
        .await
        .unwrap();
    assert_eq!(
        get(&mut ingest, "G").await.unwrap().attributes["golf_handicap"],
        f(12.4)
    );

    let again = admin
        .define_attribute(pb::DefineAttributeRequest {
            name: "golf_handicap".into(),
            r#type: pb::AttributeType::Int as i32,
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    for (name, ty, field) in [
        ("Bad-Name", pb::AttributeType::Int, "name"),
        ("and", pb::AttributeType::Int, "name"),
        ("fine_name", pb::AttributeType::Unspecified, "type"),
    ] {
        let err = admin
            .define_attribute(pb::DefineAttributeRequest {
                name: name.into(),
                r#type: ty as i32,
                description: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    let after = admin
        .get_schema(pb::GetSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.attributes.len(), schema.attributes.len());
}

/// Every refused batch holds one good customer first: nothing of the batch may be applied.
#[tokio::test]
async fn bad_input_is_refused_whole_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut ingest = server.ingest().await;
    ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
            "owner",
            Some("taken@example.com"),
            &[("gender", s("F"))],
        )]))
        .await
        .unwrap();
    let good = customer("good", Some("good@example.com"), &[("gender", s("M"))]);
    let cases: Vec<(&str, pb::Customer, &str)> = vec![
        (
            "unknown attribute",
            customer("x", None, &[("shoe_size", i(42))]),
            "customers[1].attributes[\"shoe_size\"]",
        ),
        (
            "wrong type",
            customer("x", None, &[("gender", i(1))]),
            "customers[1].attributes[\"gender\"]",
        ),
        (
            "money as double",
            customer("x", None, &[("household_size", f(1.5))]),
            "customers[1].attributes[\"household_size\"]",
        ),
        (
            "invalid date",
            customer("x", None, &[("birth_date", date(2023, 2, 29))]),
            "customers[1].attributes[\"birth_date\"]",
        ),
        (
            "empty keyword",
            customer("x", None, &[("city", s(""))]),
            "customers[1].attributes[\"city\"]",
        ),
        ("empty id", customer("", None, &[]), "customers[1].customer_id"),
        (
            "long id",
            customer(&"x".repeat(129), None, &[]),
            "customers[1].customer_id",
        ),
        (
            "malformed e-mail",
            customer("x", Some("not-an-email"), &[]),
            "customers[1].email",
        ),
        (
            "e-mail of another",
            customer("x", Some("TAKEN@example.com"), &[]),
            "customers[1].email",
        ),
        (
            "e-mail twice in batch",
            customer("x", Some("good@example.com"), &[]),
            "customers[1].email",
        ),
        (
            "read-only attribute",
            customer("x", None, &[("order_count", i(3))]),
            "customers[1].attributes[\"order_count\"]",
        ),
        (
            "id twice in batch",
            customer("good", None, &[]),
            "customers[1].customer_id",
        ),
        (
            "owner changed in a bad batch",
            customer("owner", None, &[("nope", i(1))]),
            "customers[1].attributes[\"nope\"]",
        ),
    ];
    for (what, bad, field) in cases {
        let err = ingest
            .upsert_customers(pb::UpsertCustomersRequest::new(vec![good.clone(), bad]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {}", err.message());
        assert!(err.message().starts_with(field), "{what}: {}", err.message());
        assert_eq!(
            get(&mut ingest, "good").await.unwrap_err().code(),
            Code::NotFound,
            "{what}"
        );
        assert_eq!(customer_count(&server).await, 1, "{what}");
    }
    let owner = get(&mut ingest, "owner").await.unwrap();
    assert_eq!(owner.attributes["gender"], s("F"));
    assert_eq!(owner.email.as_deref(), Some("taken@example.com"));

    // Over the batch limit.
    let many: Vec<_> = (0..10_001)
        .map(|n| customer(&format!("m{n}"), None, &[]))
        .collect();
    let err = ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(many))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("customers:") && err.message().contains("10000"),
        "{}",
        err.message()
    );
    assert_eq!(customer_count(&server).await, 1);

    // Keys on get and delete.
    let err = ingest
        .get_customer(pb::GetCustomerRequest { key: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("key"));
    let err = ingest.get_customer(by_email("nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        get(&mut ingest, "missing").await.unwrap_err().code(),
        Code::NotFound
    );
    let err = ingest
        .delete_customer(pb::DeleteCustomerRequest { key: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(customer_count(&server).await, 1);
}

#[tokio::test]
async fn stream_of_100k_single_customer_messages_is_accepted() {
    let server = TestServer::start().await;
    let mut ingest = server.ingest().await;
    const N: usize = 100_000;
    let messages = (0..N).map(|n| {
        pb::LoadCustomersRequest::new(vec![customer(
            &format!("c{n:06}"),
            Some(&format!("c{n}@example.com")),
            &[
                ("gender", s(if n % 2 == 0 { "F" } else { "M" })),
                ("household_size", i((n % 5) as i64)),
            ],
        )])
    });
    let reply = ingest
        .load_customers(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.created, reply.updated, reply.batches),
        (N as u64, 0, N as u64)
    );
    assert_eq!(customer_count(&server).await, N as u64);
    let last = get(&mut ingest, "c099999").await.unwrap();
    assert_eq!(last.email.as_deref(), Some("c99999@example.com"));
    assert_eq!(last.attributes["gender"], s("M"));
    assert_eq!(last.attributes["household_size"], i(4));
    let stats = stats(&server).await;
    assert_eq!(stats.shards, 2);
    assert!(
        stats.bytes_per_customer > 0.0 && stats.bytes_per_customer < 400.0,
        "{stats:?}"
    );
}

#[tokio::test]
async fn a_bad_batch_ends_the_stream_and_earlier_batches_stay() {
    let server = TestServer::start().await;
    let mut ingest = server.ingest().await;
    let batch = |from: usize, bad_at: Option<usize>| {
        pb::LoadCustomersRequest::new(
            (from..from + 100)
                .map(|n| {
                    if Some(n) == bad_at {
                        customer(&format!("b{n}"), Some("broken"), &[])
                    } else {
                        customer(&format!("b{n}"), None, &[("vip", b(n % 7 == 0))])
                    }
                })
                .collect(),
        )
    };
    let messages = vec![
        batch(0, None),
        batch(100, None),
        batch(200, Some(250)),
        batch(300, None),
    ];
    let err = ingest
        .load_customers(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("batch[2].customers[50].email"),
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .contains("2 earlier batches were applied (200 customers created"),
        "{}",
        err.message()
    );
    assert_eq!(customer_count(&server).await, 200);
    assert!(get(&mut ingest, "b199").await.is_ok());
    assert_eq!(get(&mut ingest, "b200").await.unwrap_err().code(), Code::NotFound);

    // A conflict found only by the writer (an e-mail owned by another customer) also stops it.
    let messages = vec![
        pb::LoadCustomersRequest::new(vec![customer("s1", Some("s@example.com"), &[])]),
        pb::LoadCustomersRequest::new(vec![
            customer("s2", None, &[]),
            customer("s3", Some("S@example.com"), &[]),
        ]),
    ];
    let err = ingest
        .load_customers(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("batch[1].customers[1].email"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("1 earlier batches were applied"),
        "{}",
        err.message()
    );
    assert!(get(&mut ingest, "s1").await.is_ok());
    assert_eq!(get(&mut ingest, "s2").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn timestamps_and_values_round_trip_exactly() {
    let server = TestServer::start().await;
    let mut ingest = server.ingest().await;
    let precise = pb::Value {
        kind: Some(Kind::TimestampValue(prost_types::Timestamp {
            seconds: -1,
            nanos: 123_456_000,
        })),
    };
    ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
            "T",
            None,
            &[("last_visit_at", precise.clone()), ("birth_date", date(1, 1, 1))],
        )]))
        .await
        .unwrap();
    let t = get(&mut ingest, "T").await.unwrap();
    assert_eq!(t.attributes["last_visit_at"], precise);
    assert_eq!(t.attributes["birth_date"], date(1, 1, 1));
}

/// A text and a float attribute, the types the built-in schema lacks.
async fn define_custom(server: &TestServer) {
    let mut admin = server.admin().await;
    for (name, ty) in [
        ("notes", pb::AttributeType::Text),
        ("golf_handicap", pb::AttributeType::Float),
    ] {
        admin
            .define_attribute(pb::DefineAttributeRequest {
                name: name.into(),
                r#type: ty as i32,
                description: String::new(),
            })
            .await
            .unwrap();
    }
}

/// Customers of every attribute type, some values left out.
fn varied(prefix: &str, count: usize) -> Vec<pb::Customer> {
    (0..count)
        .map(|n| {
            let mut attrs = vec![
                ("gender", s(["F", "M", "X"][n % 3])),
                ("household_size", i((n % 6) as i64)),
                ("vip", b(n % 10 == 0)),
                ("registered_at", ts(1_600_000_000 + n as i64 * 3_600)),
                ("notes", s(&format!("note {n}"))),
                ("golf_handicap", f(n as f64 / 4.0)),
            ];
            if n % 4 != 0 {
                attrs.push((
                    "birth_date",
                    date(1950 + (n % 50) as i32, 1 + (n % 12) as i32, 1 + (n % 28) as i32),
                ));
                attrs.push((
                    "tags",
                    list(if n % 2 == 0 { &["golf"] } else { &["ski", "tennis"] }),
                ));
            }
            let email = (n % 5 != 0).then(|| format!("{prefix}{n}@example.com"));
            customer(&format!("{prefix}{n}"), email.as_deref(), &attrs)
        })
        .collect()
}

#[tokio::test]
async fn customers_given_as_columns_read_back_as_given_as_messages() {
    let server = TestServer::start().await;
    define_custom(&server).await;
    let mut ingest = server.ingest().await;
    let rows = varied("r", 250);
    let cols = varied("c", 250);
    ingest
        .load_customers(tokio_stream::iter(
            rows.chunks(100)
                .map(|c| pb::LoadCustomersRequest::new(c.to_vec()))
                .collect::<Vec<_>>(),
        ))
        .await
        .unwrap();
    let columns: Vec<_> = cols
        .chunks(100)
        .map(|c| segmentd::codec::columns::to_columns(c).unwrap())
        .collect();
    // Some string columns come dictionary-encoded, some one string per row.
    let strings: Vec<&pb::StringColumn> = columns
        .iter()
        .flat_map(|c| &c.attributes)
        .filter_map(|a| match &a.values {
            Some(pb::attribute_column::Values::Strings(s)) => Some(s),
            _ => None,
        })
        .collect();
    assert!(strings.iter().any(|s| !s.indexes.is_empty()));
    assert!(strings.iter().any(|s| s.indexes.is_empty()));
    let batches: Vec<_> = columns
        .iter()
        .map(pb::LoadCustomersRequest::from_columns)
        .collect();
    let reply = ingest
        .load_customers(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.created, reply.updated, reply.batches), (250, 0, 3));
    for n in 0..250 {
        let (r, c) = (
            get(&mut ingest, &format!("r{n}")).await.unwrap(),
            get(&mut ingest, &format!("c{n}")).await.unwrap(),
        );
        assert_eq!(r.attributes, c.attributes, "customer {n}");
        assert_eq!(r.email.map(|e| e.replacen('r', "c", 1)), c.email, "customer {n}");
    }
    let by_email = ingest
        .get_customer(by_email("c7@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_email.customer.unwrap().customer_id, "c7");

    // UpsertCustomers takes columns too; a missing row keeps its value.
    let update = pb::CustomerColumns {
        customer_ids: vec!["c1".into(), "c2".into(), "new".into()],
        emails: vec![],
        attributes: vec![pb::AttributeColumn {
            name: "household_size".into(),
            missing: vec![1],
            values: Some(pb::attribute_column::Values::Ints(pb::IntColumn {
                values: vec![9, 8],
            })),
        }],
    };
    let reply = ingest
        .upsert_customers(pb::UpsertCustomersRequest::from_columns(&update))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.created, reply.updated), (1, 2));
    let size = |c: &pb::Customer| c.attributes.get("household_size").cloned();
    assert_eq!(size(&get(&mut ingest, "c1").await.unwrap()), Some(i(9)));
    assert_eq!(size(&get(&mut ingest, "c2").await.unwrap()), Some(i(2)));
    assert_eq!(size(&get(&mut ingest, "new").await.unwrap()), Some(i(8)));
    assert_eq!(
        get(&mut ingest, "c1").await.unwrap().email.as_deref(),
        Some("c1@example.com")
    );
}

#[tokio::test]
async fn bad_columns_are_refused_naming_the_batch_and_field() {
    let server = TestServer::start().await;
    define_custom(&server).await;
    let mut ingest = server.ingest().await;
    let good = pb::LoadCustomersRequest::from_columns(
        &segmentd::codec::columns::to_columns(&varied("g", 10)).unwrap(),
    );
    let mut wrong_kind = segmentd::codec::columns::to_columns(&varied("w", 10)).unwrap();
    let vip = wrong_kind
        .attributes
        .iter_mut()
        .find(|c| c.name == "vip")
        .unwrap();
    vip.values = Some(pb::attribute_column::Values::Ints(pb::IntColumn {
        values: vec![1; 10],
    }));
    let err = ingest
        .load_customers(tokio_stream::iter(vec![
            good.clone(),
            pb::LoadCustomersRequest::from_columns(&wrong_kind),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("batch[1].columns.attributes["),
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .contains("attribute `vip` is bool: expected bools, got ints"),
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .contains("1 earlier batches were applied (10 customers created"),
        "{}",
        err.message()
    );
    assert_eq!(customer_count(&server).await, 10);

    // A bad value names its customer as a message would; nothing of the batch is applied.
    let mut bad_email = segmentd::codec::columns::to_columns(&varied("e", 10)).unwrap();
    bad_email.emails[3] = "broken".into();
    let err = ingest
        .upsert_customers(pb::UpsertCustomersRequest::from_columns(&bad_email))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("customers[3].email"),
        "{}",
        err.message()
    );
    // Checks made by the writer name their customer the same way.
    let mut taken = segmentd::codec::columns::to_columns(&varied("t", 10)).unwrap();
    taken.emails[2] = "g1@example.com".into();
    let err = ingest
        .upsert_customers(pb::UpsertCustomersRequest::from_columns(&taken))
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("customers[2].email"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("belongs to another customer (g1)"),
        "{}",
        err.message()
    );
    assert_eq!(customer_count(&server).await, 10);
    assert_eq!(get(&mut ingest, "e0").await.unwrap_err().code(), Code::NotFound);

    // A dictionary-encoded column whose index points past its strings.
    let mut past = segmentd::codec::columns::to_columns(&varied("p", 10)).unwrap();
    past.attributes.push(pb::AttributeColumn {
        name: "loyalty_tier".into(),
        missing: vec![],
        values: Some(pb::attribute_column::Values::Strings(pb::StringColumn {
            values: vec!["gold".into(), "silver".into()],
            indexes: vec![0, 1, 1, 0, 0, 2, 1, 1, 0, 0],
        })),
    });
    let err = ingest
        .upsert_customers(pb::UpsertCustomersRequest::from_columns(&past))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("customers[5].attributes[\"loyalty_tier\"]")
            && err.message().contains("index 2 is past the 2 strings"),
        "{}",
        err.message()
    );
    assert_eq!(customer_count(&server).await, 10);
}

/// A load refused part way for overload ends with RESOURCE_EXHAUSTED that says what was applied
/// (in the message and as an ErrorInfo a loader reads to resume) and when to retry (RetryInfo);
/// the batches before the refusal stay applied and durable, none after it is.
#[tokio::test]
async fn a_load_refused_part_way_for_overload_says_what_was_applied() {
    use tonic_types::StatusExt;
    let faults = std::sync::Arc::new(segmentd::faults::Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let f = faults.clone();
    let server = TestServer::start_at(data.clone(), move |c| {
        c.faults = Some(f);
        c.fsync = segmentd::wal::FsyncMode::Always;
        c.no_snapshot_on_shutdown = true;
    })
    .await;
    let batch = |n: usize| {
        pb::LoadCustomersRequest::new(
            (0..3)
                .map(|k| customer(&format!("b{n}-{k}"), None, &[]))
                .collect(),
        )
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut ingest = server.ingest().await;
    let call = tokio::spawn(async move {
        ingest
            .load_customers(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for n in 0..2 {
        tx.send(batch(n)).await.unwrap();
    }
    // Once the first two batches are applied, the server turns busy for the next write.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while get(&mut server.ingest().await, "b1-2").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "batches not applied");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    faults.refuse_writes(1);
    for n in 2..4 {
        let _ = tx.send(batch(n)).await;
    }
    drop(tx);
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message().contains("batch[2]")
            && err
                .message()
                .contains("2 earlier batches were applied (6 customers created, 0 updated)"),
        "{}",
        err.message()
    );
    let details = err.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("PARTIALLY_APPLIED", "segmentd")
    );
    assert_eq!(info.metadata["applied_batches"], "2");
    assert_eq!(info.metadata["created"], "6");
    let retry = details.retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()));
    assert_eq!(customer_count(&server).await, 6);
    server.stop().await.unwrap();

    // What was acknowledged as applied is durable: it survives a restart from the log alone.
    let server = TestServer::start_at(data, |_| {}).await;
    assert_eq!(customer_count(&server).await, 6);
    assert!(get(&mut server.ingest().await, "b2-0").await.is_err());
}

/// Order ids are remembered for the dedup window (`--order-dedup-window-hours`) after they were
/// recorded: a retry within it counts nothing, one after it counts again, as documented; the
/// same holds after a restart that replays the log.
#[tokio::test]
async fn a_retried_order_counts_once_within_the_dedup_window_and_again_after_it() {
    use segmentd::time::ManualClock;
    const HOUR: i64 = 3_600 * 1_000_000;
    let clock = std::sync::Arc::new(ManualClock::new(1_800_000_000 * 1_000_000));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = clock.clone();
    let tune = move |cfg: &mut segmentd::config::Config| {
        cfg.clock = Some(c.clone());
        cfg.order_dedup_window_hours = 8;
        cfg.no_snapshot_on_shutdown = true;
    };
    let server = TestServer::start_at(data.clone(), tune.clone()).await;
    let mut ingest = server.ingest().await;
    let record = |id: &str| pb::RecordOrdersRequest {
        orders: vec![order(id, "C1", 1_700_000_000, 1_000, false, &[])],
    };
    let counts = |r: pb::RecordOrdersResponse| (r.applied, r.duplicates);
    assert_eq!(
        counts(ingest.record_orders(record("o1")).await.unwrap().into_inner()),
        (1, 0)
    );
    clock.advance(7 * HOUR);
    assert_eq!(
        counts(ingest.record_orders(record("o1")).await.unwrap().into_inner()),
        (0, 1)
    );
    // Orders of later hours; then, past the window, o1 is forgotten.
    for h in 0..12 {
        clock.advance(HOUR);
        ingest.record_orders(record(&format!("later-{h}"))).await.unwrap();
    }
    assert_eq!(
        counts(ingest.record_orders(record("o1")).await.unwrap().into_inner()),
        (1, 0)
    );
    let count = |c: pb::Customer| c.attributes["order_count"].clone();
    assert_eq!(count(get(&mut ingest, "C1").await.unwrap()), i(14));
    server.stop().await.unwrap();

    // Replayed from the log alone, at each record's own time: the same counts.
    let server = TestServer::start_at(data, tune).await;
    let mut ingest = server.ingest().await;
    assert_eq!(count(get(&mut ingest, "C1").await.unwrap()), i(14));
    assert_eq!(
        counts(
            ingest
                .record_orders(record("later-11"))
                .await
                .unwrap()
                .into_inner()
        ),
        (0, 1)
    );
    server.stop().await.unwrap();
}

/// Errors a program can read: a BadRequest naming the field (with the row's index), an ErrorInfo
/// with a stable reason, and the nearest attribute name for a typo, on the wire, in a rule and
/// in a column batch alike.
#[tokio::test]
async fn errors_carry_the_field_a_reason_and_the_nearest_name() {
    use tonic_types::StatusExt;
    let server = TestServer::start().await;
    let err = server
        .ingest()
        .await
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![
            customer("ok", None, &[]),
            customer("typo", None, &[("gendr", s("F"))]),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let details = err.get_error_details();
    let violation = &details.bad_request().expect("BadRequest").field_violations[0];
    assert_eq!(violation.field, "customers[1].attributes[\"gendr\"]");
    assert!(
        violation.description.contains("did you mean `gender`?"),
        "{}",
        violation.description
    );
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("INVALID_FIELD", "segmentd")
    );

    let columns = segmentd::codec::columns::to_columns(&[customer("c", None, &[("vipp", b(true))])]).unwrap();
    let err = server
        .ingest()
        .await
        .upsert_customers(pb::UpsertCustomersRequest::from_columns(&columns))
        .await
        .unwrap_err();
    assert!(err.message().contains("did you mean `vip`?"), "{}", err.message());

    let err = create(&server, text_segment("s", "totl_spent > 10"))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("did you mean `total_spent`?"),
        "{}",
        err.message()
    );
    // Nothing near: no guess.
    let err = create(&server, text_segment("s", "shoe_size > 10"))
        .await
        .unwrap_err();
    assert!(!err.message().contains("did you mean"), "{}", err.message());
    let details = err.get_error_details();
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].field,
        "segment.rule"
    );

    let err = server
        .membership()
        .await
        .is_member(pb::IsMemberRequest {
            customer_id: "ok".into(),
            segment_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.get_error_details().error_info().unwrap().reason, "NOT_FOUND");
    server.stop().await.unwrap();
}

/// An erased customer's order ids go with them: the same orders recorded again recreate the
/// customer with them, once; the same after a restart from a snapshot and from the log alone.
#[tokio::test]
async fn an_erased_customers_orders_count_again_when_recorded_again() {
    for snapshots in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let tune = move |c: &mut segmentd::config::Config| {
            if !snapshots {
                c.no_snapshot_on_shutdown = true;
                c.snapshot_interval_secs = 0;
            }
        };
        let orders = || pb::RecordOrdersRequest {
            orders: vec![
                order("o1", "X1", 1_700_000_000, 2_000, false, &[]),
                order("o2", "X1", 1_700_000_100, 3_000, false, &[]),
                order("o9", "X2", 1_700_000_000, 500, false, &[]),
            ],
        };
        let counts = |r: pb::RecordOrdersResponse| (r.applied, r.duplicates, r.created_customer_ids);
        let total = |c: pb::Customer| c.attributes["total_spent"].clone();
        let server = TestServer::start_at(data.clone(), tune).await;
        let mut ingest = server.ingest().await;
        assert_eq!(
            counts(ingest.record_orders(orders()).await.unwrap().into_inner()).0,
            3
        );
        ingest.delete_customer(delete_id("X1")).await.unwrap();
        // X1 comes back with its two orders; X2's order is still a retry.
        assert_eq!(
            counts(ingest.record_orders(orders()).await.unwrap().into_inner()),
            (2, 1, vec!["X1".to_string()])
        );
        assert_eq!(total(get(&mut ingest, "X1").await.unwrap()), i(5_000));
        assert_eq!(
            counts(ingest.record_orders(orders()).await.unwrap().into_inner()).1,
            3
        );
        // Erased again, then a restart before the orders come back.
        ingest.delete_customer(delete_id("X1")).await.unwrap();
        server.stop().await.unwrap();
        let server = TestServer::start_at(data.clone(), tune).await;
        let mut ingest = server.ingest().await;
        assert_eq!(
            counts(ingest.record_orders(orders()).await.unwrap().into_inner()),
            (2, 1, vec!["X1".to_string()]),
            "snapshots: {snapshots}"
        );
        assert_eq!(total(get(&mut ingest, "X1").await.unwrap()), i(5_000));
        server.stop().await.unwrap();
        // And after one more restart, they are retries.
        let server = TestServer::start_at(data, tune).await;
        let mut ingest = server.ingest().await;
        assert_eq!(total(get(&mut ingest, "X1").await.unwrap()), i(5_000));
        assert_eq!(
            counts(ingest.record_orders(orders()).await.unwrap().into_inner()).1,
            3
        );
        server.stop().await.unwrap();
    }
}

/// A snapshot written before order ids were kept by customer (`tests/fixtures/snapshot-v1`:
/// orders o1 for X1 and o2 for X2, the log after it deleted): its order ids are still retries
/// for a window after the restart, through a snapshot written since, then forgotten.
#[tokio::test]
async fn order_ids_of_a_version_1_snapshot_are_still_retries_after_the_upgrade() {
    use segmentd::time::ManualClock;
    const HOUR: i64 = 3_600 * 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshot-v1/data");
    crate::durability::copy_dir(&fixture, &data);
    let clock = std::sync::Arc::new(ManualClock::new(1_800_000_000 * 1_000_000));
    let c = clock.clone();
    let tune = move |cfg: &mut segmentd::config::Config| {
        cfg.clock = Some(c.clone());
        cfg.order_dedup_window_hours = 8;
    };
    let server = TestServer::start_at(data.clone(), tune.clone()).await;
    let mut ingest = server.ingest().await;
    assert_eq!(
        get(&mut ingest, "X1").await.unwrap().attributes["total_spent"],
        i(2_000)
    );
    assert_eq!(record(&mut ingest, "o1", "X1").await, (0, 1));
    assert_eq!(record(&mut ingest, "o3", "X1").await, (1, 0));
    server.stop().await.unwrap();
    // Through a version-2 snapshot (written at that shutdown).
    clock.advance(HOUR);
    let server = TestServer::start_at(data.clone(), tune.clone()).await;
    let mut ingest = server.ingest().await;
    assert_eq!(record(&mut ingest, "o2", "X2").await, (0, 1));
    assert_eq!(record(&mut ingest, "o3", "X1").await, (0, 1));
    // Past the window from the first restart (not from this one), the version-1 ids are
    // forgotten.
    clock.advance(7 * HOUR + HOUR / 2);
    assert_eq!(record(&mut ingest, "o2", "X2").await, (1, 0));
    server.stop().await.unwrap();
}

/// A stream with a bad row of every kind: a type mismatch and a repeated id (found parsing),
/// and, given column by column, an e-mail another customer holds (found by the writer).
fn stream_with_bad_rows(first: impl Fn(&mut pb::LoadCustomersRequest)) -> Vec<pb::LoadCustomersRequest> {
    let mut batch0 = pb::LoadCustomersRequest::new(vec![
        customer("g1", None, &[("household_size", i(1))]),
        customer("g2", None, &[]),
    ]);
    first(&mut batch0);
    let batch1 = pb::LoadCustomersRequest::new(vec![
        customer("g3", None, &[]),
        customer("g4", None, &[("household_size", s("two"))]),
        customer("g3", None, &[("household_size", i(3))]),
        customer("g5", Some("g5@example.com"), &[]),
    ]);
    let columns = segmentd::codec::columns::to_columns(&[
        customer("g6", Some("taken@example.com"), &[("household_size", i(6))]),
        customer("g7", Some("g7@example.com"), &[("household_size", i(7))]),
    ])
    .unwrap();
    vec![batch0, batch1, pb::LoadCustomersRequest::from_columns(&columns)]
}

async fn with_owner_of_taken() -> TestServer {
    let server = TestServer::start().await;
    upsert(&server, vec![customer("owner", Some("taken@example.com"), &[])]).await;
    server
}

/// `max_bad_rows`: each bad row is skipped and reported (batch, row, field, why), the others
/// applied; one more bad row than allowed ends the stream naming every bad row.
#[tokio::test]
async fn a_load_with_max_bad_rows_applies_the_good_rows_and_reports_each_bad_one() {
    let server = with_owner_of_taken().await;
    let mut ingest = server.ingest().await;
    let reply = ingest
        .load_customers(tokio_stream::iter(stream_with_bad_rows(|b| b.max_bad_rows = 3)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.created, reply.updated, reply.batches), (5, 0, 3));
    assert_eq!(reply.bad_row_count, 3);
    let bad: Vec<(u64, u32, &str)> = reply
        .bad_rows
        .iter()
        .map(|b| (b.batch, b.row, b.field.as_str()))
        .collect();
    assert_eq!(
        bad,
        [
            (1, 1, "batch[1].customers[1].attributes[\"household_size\"]"),
            (1, 2, "batch[1].customers[2].customer_id"),
            (2, 0, "batch[2].customers[0].email"),
        ]
    );
    assert!(
        reply.bad_rows[2]
            .reason
            .contains("belongs to another customer (owner)"),
        "{:?}",
        reply.bad_rows
    );
    for id in ["g1", "g2", "g3", "g5", "g7"] {
        assert!(get(&mut ingest, id).await.is_ok(), "{id}");
    }
    for id in ["g4", "g6"] {
        assert_eq!(
            get(&mut ingest, id).await.unwrap_err().code(),
            tonic::Code::NotFound,
            "{id}"
        );
    }
    // g3 as its first row gave it (the repeat was refused), g7 from the column batch.
    assert!(
        !get(&mut ingest, "g3")
            .await
            .unwrap()
            .attributes
            .contains_key("household_size")
    );
    assert_eq!(
        get(&mut ingest, "g7").await.unwrap().attributes["household_size"],
        i(7)
    );

    // One bad row allowed: the second ends the stream, what came before it applied.
    let server = with_owner_of_taken().await;
    let mut ingest = server.ingest().await;
    let err = ingest
        .load_customers(tokio_stream::iter(stream_with_bad_rows(|b| b.max_bad_rows = 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("more than max_bad_rows (1)"),
        "{}",
        err.message()
    );
    use tonic_types::StatusExt;
    let details = err.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "PARTIALLY_APPLIED");
    assert_eq!(details.error_info().unwrap().metadata["applied_batches"], "1");
    let fields: Vec<&str> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields.len(), 2, "{fields:?}");
    assert!(get(&mut ingest, "g1").await.is_ok());
    assert!(
        get(&mut ingest, "g3").await.is_err(),
        "the batch past the limit is not applied"
    );
}

/// `validate_only`: every bad row reported, what the rest would do counted, nothing applied.
#[tokio::test]
async fn a_load_with_validate_only_reports_every_bad_row_and_applies_nothing() {
    let server = with_owner_of_taken().await;
    upsert(&server, vec![customer("g1", None, &[])]).await;
    let before = customer_count(&server).await;
    let mut ingest = server.ingest().await;
    let reply = ingest
        .load_customers(tokio_stream::iter(stream_with_bad_rows(|b| {
            b.validate_only = true
        })))
        .await
        .unwrap()
        .into_inner();
    // g1 exists (an update); g2, g3, g5 and g7 would be created.
    assert_eq!((reply.created, reply.updated, reply.batches), (4, 1, 3));
    let fields: Vec<&str> = reply.bad_rows.iter().map(|b| b.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "batch[1].customers[1].attributes[\"household_size\"]",
            "batch[1].customers[2].customer_id",
            "batch[2].customers[0].email",
        ]
    );
    assert_eq!(customer_count(&server).await, before);
    assert!(get(&mut ingest, "g2").await.is_err());

    // The options belong to the first message: a later one may not turn them on.
    let mut stream = stream_with_bad_rows(|_| {});
    stream[1].validate_only = true;
    let err = ingest
        .load_customers(tokio_stream::iter(stream))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("batch[1].validate_only"),
        "{}",
        err.message()
    );
}

/// Records order `id` for `customer`: (applied, duplicates).
async fn record(
    ingest: &mut segmentd::api::pb::ingest_client::IngestClient<tonic::transport::Channel>,
    id: &str,
    customer: &str,
) -> (u64, u64) {
    let request = pb::RecordOrdersRequest {
        orders: vec![order(id, customer, 1_700_000_000, 1_000, false, &[])],
    };
    let r = ingest.record_orders(request).await.unwrap().into_inner();
    (r.applied, r.duplicates)
}
