package kafka

// wantInjected is how many pathway headers a consumed record carries .
const wantInjected = 1
