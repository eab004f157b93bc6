import Metrics

/// What the client reports through swift-metrics (nothing unless the process
/// bootstraps a metrics backend):
/// - `redis_client_round_trip_seconds`: a timer (histogram) per reply, from the
///   moment its request was queued for writing to the moment its reply was read;
///   its count is the number of round trips.
/// - `redis_client_connections_lost_total`: connections lost (the client reconnects).
enum RedisMetrics {
    static let roundTripLabel = "redis_client_round_trip_seconds"
    static let roundTrip = Timer(label: roundTripLabel)
    static let connectionsLost = Counter(label: "redis_client_connections_lost_total")
}
