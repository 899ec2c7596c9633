//! The one declaration of `User`'s fields: the table every per-field rule, record and conversion comes from.
//!
//! [`user_field_table!`] hands the table to a callback macro. This module's callback builds the domain side
//! (the [`UserField`] enum with its names, shapes and flags, the [`UserFields`] struct and its per-field
//! operations); `api::convert` builds the proto conversions and `store::users` the row conversions from the same
//! table. Those callbacks name every field of the prost message and of the row, so a field added to the proto or
//! to the row fails the build until the table has it.
//!
//! Types and rules in the table resolve where a callback emits them; only this module's callback emits them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::revision::{Diff, RevisionValue};
use super::user::Membership;
use super::validate::{MAX_ADDRESS_CHARS, MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, MAX_NATIONAL_ID_CHARS, TextRule};

/// Passes the table of `User`'s fields to `$callback`.
///
/// `writable` lists the fields a caller sets through a mask, in the order masks, validation and revisions walk
/// them: `name: domain type = enum variant, mask shape, field behavior, access, text rule`. The name is the proto
/// field name and the mask path; the behavior is the proto's `field_behavior` (checked against it in a test);
/// `Privileged` fields only administrators may write (API §6); string fields name the rule that validates and
/// normalizes them. `input_only` is the password, written but never returned; `output_only` the fields the
/// service maintains; `precondition` the etag a client sends back. Masks skip the last two (AIP-203).
macro_rules! user_field_table {
    ($callback:ident) => {
        $callback! {
            writable {
                username: String                       = Username,     Scalar,   Optional, Open,       Some(TextRule::Username);
                email: String                          = Email,        Scalar,   Required, Open,       Some(TextRule::Email);
                given_name: String                     = GivenName,    Scalar,   Optional, Open,       Some(TextRule::SingleLine(MAX_NAME_CHARS));
                family_name: String                    = FamilyName,   Scalar,   Optional, Open,       Some(TextRule::SingleLine(MAX_NAME_CHARS));
                phone_number: String                   = PhoneNumber,  Scalar,   Optional, Open,       Some(TextRule::PhoneNumber);
                national_id: String                    = NationalId,   Scalar,   Optional, Open,       Some(TextRule::SingleLine(MAX_NATIONAL_ID_CHARS));
                address: String                        = Address,      Scalar,   Optional, Open,       Some(TextRule::MultiLine(MAX_ADDRESS_CHARS));
                birth_date: String                     = BirthDate,    Scalar,   Optional, Open,       Some(TextRule::BirthDate);
                language_code: String                  = LanguageCode, Scalar,   Optional, Open,       Some(TextRule::LanguageCode);
                region_code: String                    = RegionCode,   Scalar,   Optional, Open,       Some(TextRule::RegionCode);
                time_zone: String                      = TimeZone,     Scalar,   Optional, Open,       Some(TextRule::TimeZone);
                image_uri: String                      = ImageUri,     Scalar,   Optional, Open,       Some(TextRule::ImageUri);
                description: String                    = Description,  Scalar,   Optional, Open,       Some(TextRule::MultiLine(MAX_DESCRIPTION_CHARS));
                labels: BTreeMap<String, String>       = Labels,       Map,      Optional, Open,       None;
                roles: Vec<String>                     = Roles,        Repeated, Optional, Privileged, None;
                memberships: Vec<Membership>           = Memberships,  Repeated, Optional, Privileged, None;
                /// A JSON object (`google.protobuf.Struct`); `None` when the user has none.
                attributes: Option<Map<String, Value>> = Attributes,   Map,      Optional, Open,       None;
                valid_from: Option<DateTime<Utc>>      = ValidFrom,    Message,  Optional, Privileged, None;
                expire_time: Option<DateTime<Utc>>     = ExpireTime,   Message,  Optional, Privileged, None;
            }
            input_only { password = Password }
            output_only { id, email_verified, state, disabled_reason, revision, create_time, update_time, delete_time, purge_time, last_login_time }
            precondition { etag }
        }
    };
}
pub(crate) use user_field_table;

/// How a field may be addressed below its name in a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Scalar,
    Map,
    Repeated,
    Message,
}

/// A field's `google.api.field_behavior` as the service applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    Optional,
    /// Must be non-empty on every write.
    Required,
    /// Written, never returned.
    InputOnly,
}

/// Who may write a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Open,
    Privileged,
}

/// What the domain needs of every writable field's value, whatever its type.
pub trait FieldValue {
    /// Whether the value is the proto3 default (empty, absent), which an inferred mask leaves out.
    fn is_unset(&self) -> bool;

    /// The value of a string field, which text rules check.
    fn as_text(&self) -> Option<&str> {
        None
    }

    fn as_text_mut(&mut self) -> Option<&mut String> {
        None
    }
}

impl FieldValue for String {
    fn is_unset(&self) -> bool {
        self.is_empty()
    }

    fn as_text(&self) -> Option<&str> {
        Some(self)
    }

    fn as_text_mut(&mut self) -> Option<&mut String> {
        Some(self)
    }
}

impl<T> FieldValue for Vec<T> {
    fn is_unset(&self) -> bool {
        self.is_empty()
    }
}

impl<K, V> FieldValue for BTreeMap<K, V> {
    fn is_unset(&self) -> bool {
        self.is_empty()
    }
}

impl<T> FieldValue for Option<T> {
    fn is_unset(&self) -> bool {
        self.is_none()
    }
}

/// Builds the domain side of the table.
macro_rules! domain_side {
    (writable { $($(#[$doc:meta])* $name:ident: $ty:ty = $variant:ident, $shape:ident, $behavior:ident, $access:ident, $text:expr;)* }
     input_only { $input:ident = $input_variant:ident } output_only { $($output:ident),* } precondition { $precondition:ident }) => {
        /// A writable field of `User`: the table's writable fields in order, then the password.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum UserField {
            $($variant,)*
            $input_variant,
        }

        /// How many writable fields `User` has, the password included.
        pub const USER_FIELD_COUNT: usize = [$(stringify!($name),)* stringify!($input)].len();

        /// Fields the service maintains: a mask naming them is not an error, they are simply skipped (AIP-203).
        pub const OUTPUT_ONLY_FIELDS: [&str; [$(stringify!($output)),*].len()] = [$(stringify!($output)),*];

        /// The version tag a client sends back to make a write conditional; never written through a mask.
        pub const PRECONDITION_FIELD: &str = stringify!($precondition);

        impl UserField {
            pub const ALL: [UserField; USER_FIELD_COUNT] = [$(UserField::$variant,)* UserField::$input_variant];

            /// The proto field name, which is also the mask path.
            pub fn name(self) -> &'static str {
                match self {
                    $(UserField::$variant => stringify!($name),)*
                    UserField::$input_variant => stringify!($input),
                }
            }

            pub fn shape(self) -> Shape {
                match self {
                    $(UserField::$variant => Shape::$shape,)*
                    UserField::$input_variant => Shape::Scalar,
                }
            }

            pub fn behavior(self) -> Behavior {
                match self {
                    $(UserField::$variant => Behavior::$behavior,)*
                    UserField::$input_variant => Behavior::InputOnly,
                }
            }

            /// Privileged fields may only be written by administrators (API §6).
            pub fn is_privileged(self) -> bool {
                match self {
                    $(UserField::$variant => Access::$access == Access::Privileged,)*
                    UserField::$input_variant => false,
                }
            }

            /// The rule a string field is validated and normalized by; `None` for every other field and for the
            /// password, which has its own policy.
            pub fn text_rule(self) -> Option<TextRule> {
                match self {
                    $(UserField::$variant => $text,)*
                    UserField::$input_variant => None,
                }
            }
        }

        /// The writable part of a user: every field a caller may set through a mask. An empty string means
        /// "unset", as in proto3; `None` means an absent message field.
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct UserFields {
            $($(#[$doc])* pub $name: $ty,)*
        }

        impl UserFields {
            /// Whether `field` holds its default value; the password is never part of `UserFields`, so always.
            pub fn is_unset(&self, field: UserField) -> bool {
                match field {
                    $(UserField::$variant => FieldValue::is_unset(&self.$name),)*
                    UserField::$input_variant => true,
                }
            }

            /// Replaces `field` with its value in `source`.
            pub fn copy_field(&mut self, field: UserField, source: &UserFields) {
                match field {
                    $(UserField::$variant => self.$name.clone_from(&source.$name),)*
                    UserField::$input_variant => {}
                }
            }

            /// Whether `field` holds the same value in both.
            pub fn same(&self, other: &UserFields, field: UserField) -> bool {
                match field {
                    $(UserField::$variant => self.$name == other.$name,)*
                    UserField::$input_variant => true,
                }
            }

            /// The value of a string field.
            pub fn text(&self, field: UserField) -> Option<&str> {
                match field {
                    $(UserField::$variant => FieldValue::as_text(&self.$name),)*
                    UserField::$input_variant => None,
                }
            }

            pub fn text_mut(&mut self, field: UserField) -> Option<&mut String> {
                match field {
                    $(UserField::$variant => FieldValue::as_text_mut(&mut self.$name),)*
                    UserField::$input_variant => None,
                }
            }

            /// Adds how `field` changed from `before` to `after` to a revision record; the password is recorded
            /// by the caller, which alone knows whether it changed.
            pub(crate) fn record_diff(before: &UserFields, after: &UserFields, field: UserField, d: &mut Diff) {
                match field {
                    $(UserField::$variant => RevisionValue::record_diff(&before.$name, &after.$name, stringify!($name), d),)*
                    UserField::$input_variant => {}
                }
            }
        }
    };
}

user_field_table!(domain_side);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_string_field_has_a_text_rule_and_no_other_field_has_one() {
        let fields = UserFields::default();
        for field in UserField::ALL {
            if field == UserField::Password {
                assert!(field.text_rule().is_none());
                continue;
            }
            assert_eq!(
                field.text_rule().is_some(),
                fields.text(field).is_some(),
                "{}: a string field without a rule would be stored unchecked",
                field.name()
            );
        }
    }

    #[test]
    fn names_are_unique_across_sections() {
        let mut names: Vec<&str> = UserField::ALL.iter().map(|f| f.name()).collect();
        names.extend(OUTPUT_ONLY_FIELDS);
        names.push(PRECONDITION_FIELD);
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
    }
}
