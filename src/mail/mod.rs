//! Outgoing mail: the transports (SMTP through lettre, or `.eml` files in the data folder), the rendering of a
//! verification mail, and the outbox sender that delivers queued mail after commit.

mod sender;
pub mod templates;

use std::path::{Path, PathBuf};

use lettre::message::header::ContentTransferEncoding;
use lettre::message::{Body, Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::MailConfig;
use crate::domain::user::User;
pub use sender::{SenderOptions, spawn};
use templates::{Language, Verification};

/// How long one SMTP exchange may take before the attempt counts as failed.
const SMTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where mail goes.
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// One RFC 5322 file per mail, named after its job, in this folder.
    Files(PathBuf),
}

/// Why an attempt failed.
#[derive(Debug)]
pub enum SendError {
    /// Worth trying again (the server is down, refused for now, timed out).
    Transient(String),
    /// Will fail the same way every time (the address cannot be written in a mail).
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient(e) => write!(f, "{e}"),
            SendError::Permanent(e) => write!(f, "{e} (permanent)"),
        }
    }
}

/// Renders and sends mail.
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    /// The domain of `Message-ID`s: the sender's.
    message_id_domain: String,
    verification_url: Option<String>,
    valid_minutes: u64,
}

impl Mailer {
    /// The mailer `config` describes; files go to `<data_dir>/outbox/` when no SMTP URL is set.
    pub fn from_config(config: &MailConfig, data_dir: &Path) -> anyhow::Result<Mailer> {
        let from: Mailbox = config
            .mail_from
            .parse()
            .map_err(|e| anyhow::anyhow!("--mail-from {:?} is not a mailbox: {e}", config.mail_from))?;
        let transport = match &config.smtp_url {
            Some(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    // The URL may hold a password: never put it in the message.
                    .map_err(|e| anyhow::anyhow!("--smtp-url is not a usable SMTP URL: {e}"))?
                    .timeout(Some(SMTP_TIMEOUT))
                    .build(),
            ),
            None => Transport::Files(data_dir.join("outbox")),
        };
        Ok(Mailer {
            transport,
            message_id_domain: from.email.domain().to_owned(),
            from,
            verification_url: config.verification_url.clone(),
            valid_minutes: config.verification_ttl.as_secs() / 60,
        })
    }

    /// Where file mail goes, when that is the transport.
    pub fn outbox_dir(&self) -> Option<&Path> {
        match &self.transport {
            Transport::Files(dir) => Some(dir),
            Transport::Smtp(_) => None,
        }
    }

    /// The link of the verification mail: the template with its placeholders filled in, URL-encoded.
    fn link(&self, user: &User, code: &str) -> Option<String> {
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        self.verification_url.as_ref().map(|template| {
            template
                .replace("{id}", &encode(&user.id.to_string()))
                .replace("{code}", &encode(code))
                .replace("{email}", &encode(&user.fields.email))
        })
    }

    /// The verification mail of job `job_id` to `user` carrying `code`, in the user's language. Its
    /// `Message-ID` is the job's, so a mail sent twice (a crash between delivery and its record) is
    /// recognizable as one.
    pub fn verification_message(&self, job_id: &str, user: &User, code: &str) -> Result<Message, SendError> {
        let link = self.link(user, code);
        let name = [user.fields.given_name.trim(), user.fields.family_name.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let rendered = templates::verification(
            Language::of(&user.fields.language_code),
            &Verification {
                name: &user.fields.given_name,
                code,
                link: link.as_deref(),
                valid_minutes: self.valid_minutes,
            },
        );
        let address = user
            .fields
            .email
            .parse()
            .map_err(|e| SendError::Permanent(format!("the address cannot be used in a mail: {e}")))?;
        let to = Mailbox::new((!name.is_empty()).then_some(name), address);
        // Quoted-printable for both parts: the Spanish texts are not ASCII, and the code line stays intact.
        let body = |s: String| {
            Body::new_with_encoding(s, ContentTransferEncoding::QuotedPrintable)
                .map_err(|_| SendError::Permanent("the mail body cannot be encoded".into()))
        };
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .message_id(Some(format!("<{job_id}@{}>", self.message_id_domain)))
            .multipart(MultiPart::alternative_plain_html(
                body(rendered.text)?,
                body(rendered.html)?,
            ))
            .map_err(|e| SendError::Permanent(format!("the mail cannot be built: {e}")))
    }

    /// Sends one mail: over SMTP, or as `<job_id>.eml` (written aside and renamed, so a reader never sees half
    /// a file, and a retry overwrites instead of adding a copy).
    pub async fn send(&self, job_id: &str, message: Message) -> Result<(), SendError> {
        match &self.transport {
            Transport::Smtp(smtp) => smtp.send(message).await.map(|_| ()).map_err(|e| {
                if e.is_permanent() {
                    SendError::Permanent(e.to_string())
                } else {
                    SendError::Transient(e.to_string())
                }
            }),
            Transport::Files(dir) => {
                let write = async {
                    tokio::fs::create_dir_all(dir).await?;
                    let part = dir.join(format!(".{job_id}.eml.part"));
                    tokio::fs::write(&part, message.formatted()).await?;
                    tokio::fs::rename(&part, dir.join(format!("{job_id}.eml"))).await
                };
                write
                    .await
                    .map_err(|e| SendError::Transient(format!("writing to {}: {e}", dir.display())))
            }
        }
    }
}
