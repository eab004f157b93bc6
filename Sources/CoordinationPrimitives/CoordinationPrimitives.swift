// CoordinationPrimitives: Session, DistributedMutex, Election, STM, Fortress and
// etcd's recipes, built only on Coordination's public API.
//
// Empty until the primitives land; it exists so that the package layout is
// visible and builds from the start.
@_exported import Coordination
