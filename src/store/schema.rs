//! Diesel table definitions, written by hand to match both backends' migrations.

diesel::table! {
    users (id) {
        id -> Text,
        username -> Nullable<Text>,
        email -> Text,
        email_key -> Text,
        email_verified -> Bool,
        given_name -> Text,
        family_name -> Text,
        phone_number -> Text,
        national_id -> Text,
        address -> Text,
        birth_date -> Text,
        language_code -> Text,
        region_code -> Text,
        time_zone -> Text,
        image_uri -> Text,
        description -> Text,
        disabled -> Bool,
        disabled_reason -> Text,
        labels -> Text,
        roles -> Text,
        memberships -> Text,
        attributes -> Nullable<Text>,
        valid_from -> Nullable<Timestamp>,
        expire_time -> Nullable<Timestamp>,
        password_hash -> Nullable<Text>,
        create_time -> Timestamp,
        update_time -> Timestamp,
        delete_time -> Nullable<Timestamp>,
        purge_time -> Nullable<Timestamp>,
        revision -> BigInt,
        last_login_time -> Nullable<Timestamp>,
    }
}

diesel::table! {
    user_labels (user_id, label_key) {
        user_id -> Text,
        label_key -> Text,
        label_value -> Text,
    }
}

diesel::table! {
    user_roles (user_id, role) {
        user_id -> Text,
        role -> Text,
    }
}

diesel::table! {
    user_revisions (user_id, revision) {
        user_id -> Text,
        revision -> BigInt,
        actor -> Text,
        update_mask -> Text,
        create_time -> Timestamp,
        before_values -> Text,
        after_values -> Text,
    }
}

diesel::table! {
    user_sign_ins (user_id) {
        user_id -> Text,
        failed_logins -> Integer,
        locked_until -> Nullable<Timestamp>,
    }
}

diesel::table! {
    user_verification_codes (code_digest) {
        code_digest -> Text,
        user_id -> Text,
        email_key -> Text,
        create_time -> Timestamp,
        expire_time -> Timestamp,
    }
}

diesel::table! {
    user_verifications (user_id) {
        user_id -> Text,
        wrong_codes -> Integer,
        last_sent_time -> Nullable<Timestamp>,
    }
}

diesel::table! {
    mail_outbox (id) {
        id -> Text,
        user_id -> Text,
        kind -> Text,
        email -> Text,
        create_time -> Timestamp,
        attempts -> Integer,
        next_attempt_time -> Timestamp,
        failed_time -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    /// The change feed; ordered by `(txid, seq)` (see the migration `change_feed`).
    user_events (seq) {
        seq -> BigInt,
        txid -> BigInt,
        user_id -> Text,
        revision -> BigInt,
        event_type -> Text,
        actor -> Text,
        update_mask -> Text,
        create_time -> Timestamp,
        snapshot -> Nullable<Text>,
    }
}

diesel::joinable!(user_sign_ins -> users (user_id));
diesel::joinable!(user_verification_codes -> users (user_id));
diesel::joinable!(user_verifications -> users (user_id));
diesel::joinable!(user_labels -> users (user_id));
diesel::joinable!(user_roles -> users (user_id));
diesel::joinable!(user_revisions -> users (user_id));
diesel::table! {
    unknown_sign_ins (login_digest) {
        login_digest -> Text,
        failed_logins -> Integer,
        locked_until -> Nullable<Timestamp>,
        update_time -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    users,
    user_labels,
    user_roles,
    user_revisions,
    user_sign_ins,
    user_verification_codes,
    user_verifications,
    mail_outbox,
    user_events,
    unknown_sign_ins
);
