//! `events::Envelope::decode` on arbitrary bytes: never panics; a decoded envelope keeps its
//! domain rule and survives encode → decode unchanged.
#![no_main]

use events::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(envelope) = Envelope::decode(bytes) {
        assert_eq!(
            envelope.entity.domain.as_str(),
            envelope.event_type.domain()
        );
        let encoded = envelope.encode();
        let again = Envelope::decode(&encoded).expect("an encoded envelope decodes");
        assert_eq!(again, envelope);
    }
});
