import CoordinationPrimitives
print("placeholder")
