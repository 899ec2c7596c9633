//! The protobuf codec of the generated gRPC code: prost, with the repeated-field limits checked on the encoded
//! message before it is decoded, and large messages decoded off the async worker threads.

use std::marker::PhantomData;
use std::sync::OnceLock;

use prost::{Message, Name};
use prost_reflect::DescriptorPool;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::decode_limits::{DecodeLimits, decode_off_worker};
use crate::domain::Error;
use crate::domain::field_mask::MAX_MASK_PATHS;
use crate::domain::validate::{MAX_ATTRIBUTES_BYTES, MAX_LABELS, MAX_MEMBERSHIPS, MAX_ROLES};

/// The limits every request of this service is held to while it is still bytes: the batch size, the mask
/// size, and the collection sizes of a user (a little above their validation limits, so that validation
/// still reports them field by field with its own message; here only what would cost memory is refused).
pub fn decode_limits() -> &'static DecodeLimits {
    static LIMITS: OnceLock<DecodeLimits> = OnceLock::new();
    LIMITS.get_or_init(|| {
        DecodeLimits::new(
            [
                ("users.v1.BatchUpdateUsersRequest.requests", super::MAX_BATCH_SIZE),
                ("google.protobuf.FieldMask.paths", MAX_MASK_PATHS),
                ("users.v1.User.labels", MAX_LABELS * 4),
                ("users.v1.User.roles", MAX_ROLES * 4),
                ("users.v1.User.memberships", MAX_MEMBERSHIPS * 4),
            ],
            // Any other list: responses hold at most a page of 1000.
            super::MAX_PAGE_SIZE as usize,
            // Attributes are at most 16 KiB once serialized, and every value takes at least one byte.
            MAX_ATTRIBUTES_BYTES,
            // A full batch of users at their collection limits, with room to spare.
            super::MAX_BATCH_SIZE * (MAX_LABELS + MAX_ROLES + MAX_MEMBERSHIPS + 64),
        )
    })
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap_or_default())
}

/// Checks the encoded `bytes` of a `U` against the limits.
pub fn check_encoded<U: Name>(bytes: &[u8]) -> Result<(), Status> {
    let Some(descriptor) = pool().get_message_by_name(&U::full_name()) else {
        return Ok(());
    };
    decode_limits()
        .check_protobuf(&descriptor, bytes)
        .map_err(|e| super::status::to_status(Error::invalid_field(e.field, e.description), "-"))
}

/// Prost encoding, and decoding behind the limits.
#[derive(Debug, Clone)]
pub struct LimitedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LimitedCodec<T, U> {
    fn default() -> Self {
        LimitedCodec(PhantomData)
    }
}

impl<T, U> Codec for LimitedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LimitedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        LimitedDecoder(PhantomData)
    }
}

/// Decodes a `U` after checking its repeated fields.
#[derive(Debug, Clone, Default)]
pub struct LimitedDecoder<U>(PhantomData<U>);

impl<U: Message + Name + Default> Decoder for LimitedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes::Buf;
        decode_off_worker(buf.remaining(), || decode_checked(buf).map(Some))
    }
}

/// Decodes a whole encoded `U` held in one contiguous buffer, after checking its repeated fields: the codec's
/// decoding, for callers that hold the bytes themselves (REST).
pub fn decode_checked<U: Message + Name + Default>(buf: impl bytes::Buf) -> Result<U, Status> {
    check_encoded::<U>(buf.chunk())?;
    // As prost's own codec does, and as the gRPC status code guide says for parse errors.
    U::decode(buf).map_err(|e| Status::internal(e.to_string()))
}
