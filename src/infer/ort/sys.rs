//! The one call into onnxruntime's C API that `ort` does not wrap without allocating: `RunWithBinding`.

use std::ffi::CStr;

use ::ort::session::{IoBinding, Session};
use ::ort::AsPointer;

/// Runs `session` on the inputs and outputs bound in `binding` (which must belong to `session`), writing the
/// outputs into the bound tensors. Allocates nothing on success; a failure's message is copied into a
/// `String`.
pub(super) fn run_with_binding(session: &Session, binding: &IoBinding) -> Result<(), String> {
    let api = ::ort::api();
    // SAFETY: (1) `session.ptr()` and `binding.ptr()` are the live, non-null handles of `session` and
    // `binding`, which outlive the call; (2) the binding was created from this session, and every value bound
    // in it is kept alive by the binding itself (and by the engine, which holds the tensors); (3) a null run
    // options pointer is allowed by the C API and means the defaults; (4) `RunWithBinding` is not safe to
    // call concurrently on one session, and the `&mut OrtEngine` the caller holds rules that out.
    let status =
        unsafe { (api.RunWithBinding)(session.ptr().cast_mut(), std::ptr::null(), binding.ptr()) };
    if status.0.is_null() {
        return Ok(());
    }
    // SAFETY: `status` is a non-null status the call above returned and nobody else owns; its message is a
    // NUL-terminated string that lives until the status is released, and it is copied before that.
    let message = unsafe {
        let text = CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        text
    };
    Err(message)
}
