//! The service's REST bindings, read once from its descriptor set: the targets that pick a binding by their
//! input's first byte share them.

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;
use user_service::transcode::rule::HttpBinding;

pub fn bindings() -> &'static [HttpBinding] {
    static BINDINGS: OnceLock<Vec<HttpBinding>> = OnceLock::new();
    BINDINGS.get_or_init(|| {
        let pool = DescriptorPool::decode(user_service::pb::FILE_DESCRIPTOR_SET).expect("the descriptor set decodes");
        let bindings = user_service::transcode::rule::bindings(&pool).expect("the http rules are valid");
        assert!(!bindings.is_empty(), "the service has REST bindings");
        bindings
    })
}
