/// The command line of the single-member etcd 3.4 that tests compare the store with,
/// shared by the test targets that start one (CoordinationTests' `EtcdServer`,
/// EtcdAPITests' `ReferenceEtcd`).
public enum ReferenceEtcdCommandLine {
    /// The arguments of an etcd named "reference" with its data and logs in
    /// `directory`, serving clients at `client` and peers at `peer` (both
    /// `http://host:port`), logging to `directory/etcd.log`.
    public static func arguments(directory: String, client: String, peer: String) -> [String] {
        [
            "--name", "reference", "--data-dir", directory + "/data",
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", "reference=\(peer)", "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", directory + "/etcd.log",
        ]
    }
}
