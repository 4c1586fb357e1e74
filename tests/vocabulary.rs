//! The system property names exist twice by design — `mbx-adapters` must not depend on
//! the MessageBox crate — so this test keeps the two lists equal.

use mbx_adapters::system as a;
use mbx_messagebox::context::system as m;

#[test]
fn adapters_and_messagebox_name_the_system_properties_alike() {
    let pairs = [
        (a::MESSAGE_ID, m::MESSAGE_ID),
        (a::MESSAGE_TYPE, m::MESSAGE_TYPE),
        (a::CONTENT_TYPE, m::CONTENT_TYPE),
        (a::PUBLISHED_AT, m::PUBLISHED_AT),
        (a::RECEIVE_PORT_NAME, m::RECEIVE_PORT_NAME),
        (a::RECEIVE_LOCATION_NAME, m::RECEIVE_LOCATION_NAME),
        (a::INBOUND_TRANSPORT_TYPE, m::INBOUND_TRANSPORT_TYPE),
        (a::INBOUND_TRANSPORT_LOCATION, m::INBOUND_TRANSPORT_LOCATION),
        (
            a::OUTBOUND_TRANSPORT_LOCATION,
            m::OUTBOUND_TRANSPORT_LOCATION,
        ),
        (a::SOURCE_FILE_NAME, m::SOURCE_FILE_NAME),
        (a::RETRY_COUNT, m::RETRY_COUNT),
        (a::RETRY_INTERVAL, m::RETRY_INTERVAL),
        (a::SEND_PORT_NAME, m::SEND_PORT_NAME),
        (a::SEQUENCE, m::SEQUENCE),
        (a::EPOCH, m::EPOCH),
        (a::NAMESPACE, m::NAMESPACE),
    ];
    for (adapters, messagebox) in pairs {
        assert_eq!(adapters, messagebox);
    }
}
