package kafka

// wantInjected is how many pathway headers a consumed record carries (0 until the codec lands).
const wantInjected = 0
