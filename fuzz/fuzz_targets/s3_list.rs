//! The ListObjectsV2 page parser on arbitrary bytes: no panic, and output bounded by the
//! input (no entry or key out of nothing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stowage::fuzzing::parse_page;

fuzz_target!(|data: &[u8]| {
    let (flags, body) = data.split_first().unwrap_or((&0, data));
    let strip = if flags & 2 == 0 { "" } else { "p/" };
    let Ok(page) = parse_page(body, flags & 1 == 1, strip) else {
        return;
    };
    // Every entry needs at least `<Contents>` and a `<Key>` in the body; lossy UTF-8 can
    // triple a byte, and no decoding makes text longer than that.
    let bound = 3 * body.len();
    assert!(page.entries.len() + page.prefixes.len() <= body.len() / 10);
    let mut total = page.next_token.as_ref().map_or(0, String::len);
    for e in &page.entries {
        match e {
            Ok(o) => total += o.key.len() + o.etag.as_ref().map_or(0, String::len),
            Err(msg) => assert!(msg.contains("store prefix")),
        }
    }
    for p in page.prefixes.iter().flatten() {
        total += p.len();
    }
    assert!(total <= bound, "{total} bytes out of {}", body.len());
});
