"""A1111 serialises GPU work with this lock."""
import threading

queue_lock = threading.Lock()
