// CoordinationPrimitives: Session, DistributedMutex, Election, STM, Fortress and
// etcd's recipes, built only on Coordination's public API.
@_exported import Coordination
