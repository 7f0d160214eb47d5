# frozen_string_literal: true

# fork: a child process cannot use its parent's client (ForkError, and the
# parent's handles are never freed by the child's garbage collector), makes
# its own client and uses it; the parent's client is unaffected.
require_relative "test_helper"

class ForkTest < Minitest::Test
  CLUSTER = KRTest.cluster

  def get(client, path = "/status?code=200")
    client.request(agent: KRTest::AGENT_ID, service: "web", path: path)
  end

  def test_child_makes_its_own_client
    parent = CLUSTER.client
    assert_equal 200, get(parent).status
    stream = parent.open_stream(agent: KRTest::AGENT_ID, service: "echo")
    rd, wr = IO.pipe
    pid = fork do
      rd.close
      report = []
      begin
        get(parent)
        report << "parent's client worked in the child"
      rescue KasRoute::ForkError => e
        report << "ok: #{e.message}" if e.message.include?("process")
      end
      begin
        stream.write("x")
        report << "parent's stream worked in the child"
      rescue KasRoute::ForkError
        report << "ok"
      end
      # The parent's objects go away in the child: their finalizers must
      # leave the parent's handles alone.
      stream.close
      parent.close
      own = CLUSTER.client
      res = get(own, "/bytes?n=12345")
      report << (res.status == 200 && res.body.bytesize == 12_345 ? "ok" : "child request: #{res.inspect}")
      own.open_stream(agent: KRTest::AGENT_ID, service: "echo") do |s|
        s.write("child")
        report << (s.read(5) == "child" ? "ok" : "child stream failed")
      end
      own.close
      wr.write(report.join("\n"))
      wr.close
      exit!(0)
    rescue Exception => e # rubocop:disable Lint/RescueException
      wr.write("child raised #{e.class}: #{e.message}")
      wr.close
      exit!(1)
    end
    wr.close
    report = rd.read
    rd.close
    _, st = Process.waitpid2(pid)
    assert st.success?, "child: #{st.inspect}: #{report}"
    lines = report.lines.map(&:chomp)
    assert_equal 4, lines.size, report
    assert(lines.all? { |l| l.start_with?("ok") }, report)
    # The parent's client and stream still work after the child is gone.
    assert_equal 200, get(parent).status
    stream.write("parent")
    assert_equal "parent", stream.read(6)
    stream.close
    parent.close
  end

  def test_finalizers_in_a_child_leave_handles_alone
    c = CLUSTER.client
    assert_equal 200, get(c).status
    pid = fork do
      # Release every handle the child inherited, as at exit.
      ObjectSpace.each_object(FFI::AutoPointer) { |p| p.instance_variable_get(:@releaser)&.call }
      GC.start
      exit!(0)
    end
    _, st = Process.waitpid2(pid)
    assert st.success?, st.inspect
    assert_equal 200, get(c).status
    c.close
  end
end
