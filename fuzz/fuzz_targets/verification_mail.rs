//! Verification mail: a user's own text (name, language code, address) and a sent code, rendered into a mail.
//! `check_code_shape`, `Language::of`, the templates and the message builder never panic; a mail that builds
//! carries the code, the user's name adds no markup to its HTML, and has exactly the headers the
//! builder writes (no header injection through the name or the address).
//!
//! Input: lossy UTF-8 split at `\n` into given name, language code, e-mail address and code.

#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use user_service::config::{Cli, Command};
use user_service::domain::user::{User, UserFields};
use user_service::domain::verification::check_code_shape;
use user_service::mail::Mailer;
use user_service::mail::templates::{self, Language, Verification};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let (name, language, email, code) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let _ = check_code_shape(code);
    let render = |name: &str| {
        templates::verification(
            Language::of(language),
            &Verification {
                name,
                code: "C0DE",
                link: Some(email),
                valid_minutes: 24 * 60,
            },
        )
    };
    let rendered = render(name);
    assert!(rendered.text.contains("\nC0DE\n"));
    // The name adds no markup: the HTML has as many `<` with it as without it.
    let tags = |html: &str| html.matches('<').count();
    assert_eq!(
        tags(&rendered.html),
        tags(&render("").html),
        "{name:?} reached the HTML unescaped"
    );
    let Ok(cli) = Cli::try_parse_from([
        "user-service",
        "serve",
        "--verification-url",
        "https://app.test/v?u={id}&c={code}&e={email}",
    ]) else {
        panic!("the fixed command line parses");
    };
    let Command::Serve(config) = cli.command else {
        panic!("a serve command");
    };
    let Ok(mailer) = Mailer::from_config(&config.mail, std::path::Path::new("/nonexistent")) else {
        panic!("the default mailer builds");
    };
    let now = chrono::Utc::now();
    let user = User {
        id: uuid::Uuid::nil(),
        fields: UserFields {
            email: email.to_owned(),
            given_name: name.to_owned(),
            language_code: language.to_owned(),
            ..Default::default()
        },
        email_verified: false,
        disabled: false,
        disabled_reason: String::new(),
        has_password: false,
        create_time: now,
        update_time: now,
        delete_time: None,
        purge_time: None,
        last_login_time: None,
        revision: 1,
    };
    if let Ok(message) = mailer.verification_message("job", &user, "c0de-CODE_0123456789") {
        let raw = String::from_utf8_lossy(&message.formatted()).replace("=\r\n", "");
        assert!(raw.contains("c0de-CODE_0123456789"));
        // No header injection: the header block has exactly the headers the builder writes (and their
        // folded continuation lines), whatever the name or address holds.
        let headers = raw.split("\r\n\r\n").next().unwrap_or("");
        for line in headers.split("\r\n").filter(|l| !l.starts_with([' ', '\t'])) {
            let name = line.split(':').next().unwrap_or("");
            assert!(
                [
                    "From",
                    "To",
                    "Subject",
                    "Message-ID",
                    "MIME-Version",
                    "Date",
                    "Content-Type"
                ]
                .contains(&name),
                "unexpected header line {line:?}"
            );
        }
    }
});
