//! The update rules of API §4, each shown over the wire on both backends.

use std::collections::HashMap;

use tonic::Code;
use user_service::pb;

use crate::backend_tests;
use crate::support::{TestApp, create, expect_code, mask, reason, update, violation_fields};

backend_tests!(
    explicit_mask_changes_and_clears_exactly_the_listed_fields,
    no_mask_means_populated_fields,
    star_replaces_every_writable_field,
    map_keys_are_set_and_deleted_one_by_one,
    repeated_fields_are_replaced_whole,
    output_only_paths_are_ignored,
    unknown_index_and_sub_paths_are_rejected,
    stale_etag_aborts_and_changes_nothing,
    no_op_keeps_revision_and_etag,
    allow_missing_creates,
    validate_only_writes_nothing,
    email_change_resets_verification_and_is_validated,
);

fn full_user(email: &str) -> pb::User {
    pb::User {
        email: email.into(),
        username: "full".into(),
        given_name: "Ann".into(),
        family_name: "Lee".into(),
        phone_number: "+573001234567".into(),
        description: "first".into(),
        labels: HashMap::from([
            ("team".to_owned(), "core".to_owned()),
            ("tier".to_owned(), "gold".to_owned()),
        ]),
        roles: vec!["admin".into(), "dev".into()],
        attributes: Some(prost_types::Struct {
            fields: [(
                "score".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(7.0)),
                },
            )]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

async fn explicit_mask_changes_and_clears_exactly_the_listed_fields(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, full_user("m@example.com")).await;
    let updated = update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            given_name: "Bea".into(),
            family_name: "ignored: not in the mask".into(),
            ..Default::default()
        },
        &["given_name", "description"],
    )
    .await
    .expect("update");
    assert_eq!(updated.given_name, "Bea");
    assert_eq!(updated.description, "", "listed but empty: cleared");
    assert_eq!(updated.family_name, "Lee", "not listed: unchanged");
    assert_eq!(updated.phone_number, u.phone_number);
    assert_eq!(updated.labels, u.labels);
    assert_eq!(updated.revision, 2);
    assert_ne!(updated.etag, u.etag);

    // Clearing the required email is refused.
    let status = expect_code(
        update(
            &mut c,
            pb::User {
                id: u.id.clone(),
                ..Default::default()
            },
            &["email"],
        )
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["user.email"]);
}

async fn no_mask_means_populated_fields(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, full_user("p@example.com")).await;
    let updated = update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            family_name: "Park".into(),
            ..Default::default()
        },
        &[],
    )
    .await
    .expect("update");
    assert_eq!(updated.family_name, "Park");
    assert_eq!(
        updated.given_name, "Ann",
        "empty fields are not part of an inferred mask"
    );
    assert_eq!(updated.roles, u.roles);
}

async fn star_replaces_every_writable_field(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(
        &mut c,
        pb::User {
            password: "Old-Passw0rd!".into(),
            ..full_user("s@example.com")
        },
    )
    .await;
    let replaced = update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            email: "s2@example.com".into(),
            given_name: "Only".into(),
            ..Default::default()
        },
        &["*"],
    )
    .await
    .expect("replace");
    assert_eq!(replaced.email, "s2@example.com");
    assert_eq!(replaced.given_name, "Only");
    assert_eq!(replaced.username, "");
    assert_eq!(replaced.family_name, "");
    assert!(replaced.labels.is_empty() && replaced.roles.is_empty() && replaced.attributes.is_none());
    assert_eq!(replaced.id, u.id);
    assert_eq!(
        replaced.create_time, u.create_time,
        "output-only fields keep their values"
    );
    // The password was not sent, so it is unchanged: the revision lists no password path.
    let revisions = c
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: u.id.clone(),
            ..Default::default()
        })
        .await
        .expect("revisions")
        .into_inner();
    let last = revisions.revisions[0].update_mask.clone().expect("mask").paths;
    assert!(!last.contains(&"password".to_owned()), "{last:?}");
}

async fn map_keys_are_set_and_deleted_one_by_one(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, full_user("k@example.com")).await;
    let updated = update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            labels: HashMap::from([
                ("new-key".to_owned(), "v".to_owned()),
                ("team".to_owned(), "ignored".to_owned()),
            ]),
            attributes: Some(prost_types::Struct {
                fields: [(
                    "a.b".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue("dotted".into())),
                    },
                )]
                .into_iter()
                .collect(),
            }),
            ..Default::default()
        },
        &[
            "labels.`new-key`",
            "labels.tier",
            "attributes.`a.b`",
            "attributes.score",
        ],
    )
    .await
    .expect("map keys");
    assert_eq!(
        updated.labels,
        HashMap::from([
            ("team".to_owned(), "core".to_owned()),
            ("new-key".to_owned(), "v".to_owned())
        ]),
        "tier deleted (absent from the user), new-key set, team untouched"
    );
    let attributes = updated.attributes.expect("attributes");
    assert_eq!(attributes.fields.len(), 1);
    assert!(attributes.fields.contains_key("a.b"));
}

async fn repeated_fields_are_replaced_whole(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, full_user("r@example.com")).await;
    let updated = update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            roles: vec!["viewer".into()],
            memberships: vec![pb::Membership {
                organization_id: "org-1".into(),
                role: "owner".into(),
                admin: true,
            }],
            ..Default::default()
        },
        &["roles", "memberships"],
    )
    .await
    .expect("replace lists");
    assert_eq!(updated.roles, vec!["viewer".to_owned()]);
    assert_eq!(updated.memberships.len(), 1);
    let cleared = update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            ..Default::default()
        },
        &["roles"],
    )
    .await
    .expect("clear");
    assert!(cleared.roles.is_empty());
}

async fn output_only_paths_are_ignored(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, full_user("o@example.com")).await;
    let updated = update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            given_name: "New".into(),
            state: pb::user::State::Disabled as i32,
            revision: 99,
            email_verified: true,
            ..Default::default()
        },
        &["given_name", "state", "revision", "email_verified", "create_time", "id"],
    )
    .await
    .expect("update");
    assert_eq!(updated.given_name, "New");
    assert_eq!(updated.state, pb::user::State::Active as i32);
    assert_eq!(updated.revision, 2);
    assert!(!updated.email_verified);
}

async fn unknown_index_and_sub_paths_are_rejected(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, full_user("x@example.com")).await;
    for paths in [
        vec!["nickname"],
        vec!["roles.0"],
        vec!["given_name.first"],
        vec!["memberships.role"],
        vec!["*", "email"],
    ] {
        let status = expect_code(
            update(
                &mut c,
                pb::User {
                    id: u.id.clone(),
                    ..Default::default()
                },
                &paths,
            )
            .await,
            Code::InvalidArgument,
        );
        assert_eq!(violation_fields(&status), vec!["update_mask"], "{paths:?}");
    }
    // Several bad paths are all reported.
    let status = expect_code(
        update(
            &mut c,
            pb::User {
                id: u.id.clone(),
                ..Default::default()
            },
            &["a", "b", "given_name"],
        )
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status).len(), 2);
    let unchanged = c
        .get_user(pb::GetUserRequest { id: u.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(unchanged, u);
}

async fn stale_etag_aborts_and_changes_nothing(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, full_user("e@example.com")).await;
    let first = update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            given_name: "One".into(),
            etag: u.etag.clone(),
            ..Default::default()
        },
        &["given_name"],
    )
    .await
    .expect("fresh etag");
    let status = expect_code(
        update(
            &mut c,
            pb::User {
                id: u.id.clone(),
                given_name: "Two".into(),
                etag: u.etag.clone(),
                ..Default::default()
            },
            &["given_name"],
        )
        .await,
        Code::Aborted,
    );
    assert_eq!(reason(&status), "ETAG_MISMATCH");
    let now = c
        .get_user(pb::GetUserRequest { id: u.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(now, first);
}

async fn no_op_keeps_revision_and_etag(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, full_user("n@example.com")).await;
    let same = update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            given_name: "Ann".into(),
            labels: u.labels.clone(),
            ..Default::default()
        },
        &["given_name", "labels"],
    )
    .await
    .expect("no-op");
    assert_eq!(same, u, "nothing changed, not even update_time or etag");
    let revisions = c
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: u.id.clone(),
            ..Default::default()
        })
        .await
        .expect("revisions")
        .into_inner();
    assert_eq!(revisions.revisions.len(), 1);
}

async fn allow_missing_creates(app: TestApp) {
    let mut c = app.client.clone();
    let id = uuid::Uuid::new_v4().to_string();
    let request = |allow_missing| pb::UpdateUserRequest {
        user: Some(pb::User {
            id: id.clone(),
            email: "am@example.com".into(),
            given_name: "Am".into(),
            ..Default::default()
        }),
        update_mask: mask(&["given_name"]),
        allow_missing,
        ..Default::default()
    };
    expect_code(c.update_user(request(false)).await, Code::NotFound);
    let created = c.update_user(request(true)).await.expect("created").into_inner();
    assert_eq!(created.id, id);
    assert_eq!(created.email, "am@example.com", "the mask is ignored when creating");
    assert_eq!(created.revision, 1);
    // Second time it is an ordinary update.
    let again = c.update_user(request(true)).await.expect("update").into_inner();
    assert_eq!(again.revision, 1, "same values: no-op");
}

async fn validate_only_writes_nothing(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, full_user("vo@example.com")).await;
    let preview = c
        .update_user(pb::UpdateUserRequest {
            user: Some(pb::User {
                id: u.id.clone(),
                given_name: "Preview".into(),
                ..Default::default()
            }),
            update_mask: mask(&["given_name"]),
            validate_only: true,
            ..Default::default()
        })
        .await
        .expect("validate only")
        .into_inner();
    assert_eq!(preview.given_name, "Preview");
    assert_eq!(preview.revision, 2, "shows the result it would have");
    let stored = c
        .get_user(pb::GetUserRequest { id: u.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(stored, u);
    let bad = c
        .update_user(pb::UpdateUserRequest {
            user: Some(pb::User {
                id: u.id.clone(),
                phone_number: "nope".into(),
                ..Default::default()
            }),
            update_mask: mask(&["phone_number"]),
            validate_only: true,
            ..Default::default()
        })
        .await;
    assert_eq!(
        violation_fields(&expect_code(bad, Code::InvalidArgument)),
        vec!["user.phone_number"]
    );
}

async fn email_change_resets_verification_and_is_validated(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, full_user("ev@example.com")).await;
    let changed = update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            email: "ev2@example.com".into(),
            ..Default::default()
        },
        &["email"],
    )
    .await
    .expect("email change");
    assert!(!changed.email_verified);
    let revisions = c
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: u.id.clone(),
            ..Default::default()
        })
        .await
        .expect("revisions")
        .into_inner();
    assert_eq!(
        revisions.revisions[0].update_mask.clone().expect("mask").paths,
        vec!["email"]
    );
    let status = expect_code(
        update(
            &mut c,
            pb::User {
                id: u.id.clone(),
                email: "not an email".into(),
                ..Default::default()
            },
            &["email"],
        )
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["user.email"]);
    let status = expect_code(
        update(
            &mut c,
            pb::User {
                id: "bad".into(),
                ..Default::default()
            },
            &["email"],
        )
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["user.id"]);
}
