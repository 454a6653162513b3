helloB
fastkv(0@PX