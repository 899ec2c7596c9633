//! Each field rule of API §2 over the wire: a good value is accepted and a bad one refused with a violation
//! naming the field; several bad fields are reported at once.

use std::collections::HashMap;

use tonic::Code;
use user_service::pb;

use crate::backend_tests;
use crate::support::{TestApp, expect_code, violation_fields};

backend_tests!(
    each_rule_accepts_good_and_refuses_bad_values,
    all_violations_are_reported_at_once
);

type Edit = Box<dyn Fn(&mut pb::User)>;

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn string_value(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.into())),
    }
}

/// (rule, good edit, bad edit, field the violation must name)
fn cases() -> Vec<(&'static str, Edit, Edit, &'static str)> {
    vec![
        (
            "username pattern",
            Box::new(|u| u.username = "ann.lee_1".into()),
            Box::new(|u| u.username = "a!".into()),
            "user.username",
        ),
        (
            "username length",
            Box::new(|u| u.username = "abc".into()),
            Box::new(|u| u.username = "ab".into()),
            "user.username",
        ),
        (
            "email syntax",
            Box::new(|u| u.email = "first.last@sub.example.co".into()),
            Box::new(|u| u.email = "no-at-sign".into()),
            "user.email",
        ),
        (
            "email length",
            Box::new(|u| u.email = format!("{}@example.com", "a".repeat(64))),
            Box::new(|u| u.email = format!("aaaaa@{}com", format!("{}.", "b".repeat(61)).repeat(4))),
            "user.email",
        ),
        (
            "email required",
            Box::new(|u| u.email = "x@example.com".into()),
            Box::new(|u| u.email = String::new()),
            "user.email",
        ),
        (
            "given_name length",
            Box::new(|u| u.given_name = "a".repeat(200)),
            Box::new(|u| u.given_name = "a".repeat(201)),
            "user.given_name",
        ),
        (
            "family_name length",
            Box::new(|u| u.family_name = "Ñandú".into()),
            Box::new(|u| u.family_name = "b".repeat(201)),
            "user.family_name",
        ),
        (
            "phone E.164",
            Box::new(|u| u.phone_number = "+593984535283".into()),
            Box::new(|u| u.phone_number = "0984535283".into()),
            "user.phone_number",
        ),
        (
            "national_id length",
            Box::new(|u| u.national_id = "900.123.456-7".into()),
            Box::new(|u| u.national_id = "9".repeat(65)),
            "user.national_id",
        ),
        (
            "address length",
            Box::new(|u| u.address = "Cra 7 # 71-21\nBogotá".into()),
            Box::new(|u| u.address = "x".repeat(501)),
            "user.address",
        ),
        (
            "birth_date real date",
            Box::new(|u| u.birth_date = "2000-02-29".into()),
            Box::new(|u| u.birth_date = "2001-02-29".into()),
            "user.birth_date",
        ),
        (
            "birth_date not future",
            Box::new(|u| u.birth_date = "1990-01-01".into()),
            Box::new(|u| u.birth_date = "2999-01-01".into()),
            "user.birth_date",
        ),
        (
            "language BCP 47",
            Box::new(|u| u.language_code = "es-CO".into()),
            Box::new(|u| u.language_code = "spanish!".into()),
            "user.language_code",
        ),
        (
            "region ISO 3166",
            Box::new(|u| u.region_code = "CL".into()),
            Box::new(|u| u.region_code = "XX".into()),
            "user.region_code",
        ),
        (
            "time zone IANA",
            Box::new(|u| u.time_zone = "America/Bogota".into()),
            Box::new(|u| u.time_zone = "Mars/Olympus".into()),
            "user.time_zone",
        ),
        (
            "image_uri http(s)",
            Box::new(|u| u.image_uri = "https://cdn.example.com/a.png".into()),
            Box::new(|u| u.image_uri = "ftp://example.com/a.png".into()),
            "user.image_uri",
        ),
        (
            "description length",
            Box::new(|u| u.description = "d".repeat(2000)),
            Box::new(|u| u.description = "d".repeat(2001)),
            "user.description",
        ),
        (
            "label key",
            Box::new(|u| u.labels = HashMap::from([("load-uuid_1".into(), "x".into())])),
            Box::new(|u| u.labels = HashMap::from([("Bad Key".into(), "x".into())])),
            "user.labels[Bad Key]",
        ),
        (
            "label value length",
            Box::new(|u| u.labels = HashMap::from([("k".into(), "v".repeat(256))])),
            Box::new(|u| u.labels = HashMap::from([("k".into(), "v".repeat(257))])),
            "user.labels[k]",
        ),
        (
            "label count",
            Box::new(|u| u.labels = (0..64).map(|i| (format!("k{i}"), "v".into())).collect()),
            Box::new(|u| u.labels = (0..65).map(|i| (format!("k{i}"), "v".into())).collect()),
            "user.labels",
        ),
        (
            "role pattern",
            Box::new(|u| u.roles = vec!["org:admin".into()]),
            Box::new(|u| u.roles = vec!["ok".into(), "Bad Role".into()]),
            "user.roles[1]",
        ),
        (
            "roles unique",
            Box::new(|u| u.roles = vec!["a".into(), "b".into()]),
            Box::new(|u| u.roles = vec!["a".into(), "a".into()]),
            "user.roles[1]",
        ),
        (
            "membership organization",
            Box::new(|u| {
                u.memberships = vec![pb::Membership {
                    organization_id: "org-1".into(),
                    role: "admin".into(),
                    admin: true,
                }]
            }),
            Box::new(|u| {
                u.memberships = vec![pb::Membership {
                    organization_id: String::new(),
                    role: String::new(),
                    admin: false,
                }]
            }),
            "user.memberships[0].organization_id",
        ),
        (
            "membership unique",
            Box::new(|u| {
                u.memberships = vec![
                    pb::Membership {
                        organization_id: "o1".into(),
                        ..Default::default()
                    },
                    pb::Membership {
                        organization_id: "o2".into(),
                        ..Default::default()
                    },
                ]
            }),
            Box::new(|u| {
                u.memberships = vec![
                    pb::Membership {
                        organization_id: "o1".into(),
                        ..Default::default()
                    },
                    pb::Membership {
                        organization_id: "o1".into(),
                        ..Default::default()
                    },
                ]
            }),
            "user.memberships[1].organization_id",
        ),
        (
            "attributes size",
            Box::new(|u| {
                u.attributes = Some(prost_types::Struct {
                    fields: [("history".to_owned(), string_value(&"h".repeat(10_000)))]
                        .into_iter()
                        .collect(),
                })
            }),
            Box::new(|u| {
                u.attributes = Some(prost_types::Struct {
                    fields: [("history".to_owned(), string_value(&"h".repeat(17_000)))]
                        .into_iter()
                        .collect(),
                })
            }),
            "user.attributes",
        ),
        (
            "attributes finite numbers",
            Box::new(|u| {
                u.attributes = Some(prost_types::Struct {
                    fields: [(
                        "score".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::NumberValue(4.5)),
                        },
                    )]
                    .into_iter()
                    .collect(),
                })
            }),
            Box::new(|u| {
                u.attributes = Some(prost_types::Struct {
                    fields: [(
                        "score".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
                        },
                    )]
                    .into_iter()
                    .collect(),
                })
            }),
            "user.attributes",
        ),
        (
            "attributes values have a kind",
            Box::new(|u| {
                u.attributes = Some(prost_types::Struct {
                    fields: [(
                        "nothing".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::NullValue(0)),
                        },
                    )]
                    .into_iter()
                    .collect(),
                })
            }),
            Box::new(|u| {
                u.attributes = Some(prost_types::Struct {
                    fields: [("nothing".to_owned(), prost_types::Value { kind: None })]
                        .into_iter()
                        .collect(),
                })
            }),
            "user.attributes",
        ),
        (
            "validity window",
            Box::new(|u| {
                u.valid_from = ts(1_700_000_000);
                u.expire_time = ts(1_800_000_000);
            }),
            Box::new(|u| {
                u.valid_from = ts(1_800_000_000);
                u.expire_time = ts(1_700_000_000);
            }),
            "user.expire_time",
        ),
        (
            "timestamp range",
            Box::new(|u| u.valid_from = ts(0)),
            Box::new(|u| u.valid_from = Some(prost_types::Timestamp { seconds: 0, nanos: -1 })),
            "user.valid_from",
        ),
        (
            "password policy",
            Box::new(|u| u.password = "Abcdef1!".into()),
            Box::new(|u| u.password = "abcdefgh".into()),
            "user.password",
        ),
        (
            "no NUL characters",
            Box::new(|u| u.given_name = "Ann".into()),
            Box::new(|u| u.given_name = "A\0nn".into()),
            "user.given_name",
        ),
    ]
}

async fn each_rule_accepts_good_and_refuses_bad_values(app: TestApp) {
    let mut c = app.client.clone();
    for (i, (rule, good, bad, field)) in cases().into_iter().enumerate() {
        let mut ok = pb::User {
            email: format!("good{i}@example.com"),
            ..Default::default()
        };
        good(&mut ok);
        let created = c
            .create_user(pb::CreateUserRequest {
                user: Some(ok),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{rule}: good value refused: {e:?}"));
        assert_eq!(created.into_inner().password, "");

        let mut not_ok = pb::User {
            email: format!("bad{i}@example.com"),
            ..Default::default()
        };
        bad(&mut not_ok);
        let status = expect_code(
            c.create_user(pb::CreateUserRequest {
                user: Some(not_ok),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
        );
        assert_eq!(violation_fields(&status), vec![field.to_owned()], "{rule}: {status:?}");
        assert!(
            !status.message().contains("abcdefgh"),
            "a refused password is never echoed"
        );
    }
}

async fn all_violations_are_reported_at_once(app: TestApp) {
    let mut c = app.client.clone();
    let status = expect_code(
        c.create_user(pb::CreateUserRequest {
            user: Some(pb::User {
                email: "bad".into(),
                username: "x".into(),
                phone_number: "1".into(),
                region_code: "ZZ".into(),
                password: "short".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    let mut fields = violation_fields(&status);
    fields.sort();
    fields.dedup();
    assert_eq!(
        fields,
        vec![
            "user.email",
            "user.password",
            "user.phone_number",
            "user.region_code",
            "user.username"
        ]
    );
    let listed = c
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.users.is_empty(), "nothing was written");
}
